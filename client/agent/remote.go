package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/ecunet"
	"github.com/roadsign/roadsign/client/secondary"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/progress"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// ecuDriver is one ECU's boot control as the agent drives it: its own
// slots (bootctl.ECU), or a secondary ECU over the vehicle network
// (remoteECU), which verifies and installs for itself.
type ecuDriver interface {
	LoadRecord() (*bootctl.Record, error)
	LoadJournal() (*bootctl.Journal, error)
	Recover(bootctl.Hooks) (string, error)
	Switch(bootctl.Hooks) error
	Trial(bootctl.Hooks) error
	Commit(bootctl.Hooks) error
	Revert(why string) (bool, error)
	Abort() error
}

// driver is how the agent reaches ECU e of v.
func driver(v *vehicle.Vehicle, e vehicle.ECUConfig) ecuDriver {
	if e.Addr != "" {
		return &remoteECU{ecu: e}
	}
	return v.ECU(e)
}

// remoteTimeout bounds each exchange with a secondary.
const remoteTimeout = 30 * time.Second

// remoteECU is a secondary ECU reached over the vehicle network
// (docs/secondaries.md). Its answers are its own: a refusal is final.
type remoteECU struct {
	ecu  vehicle.ECUConfig
	conn *ecunet.Conn
}

// errSecondaryUnreachable marks a secondary that cannot be reached.
var errSecondaryUnreachable = errors.New("secondary ECU unreachable on the vehicle network")

func (r *remoteECU) dial() (*ecunet.Conn, error) {
	if r.conn != nil {
		return r.conn, nil
	}
	nc, err := net.DialTimeout("tcp", r.ecu.Addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s at %s: %v", errSecondaryUnreachable, r.ecu.Type, r.ecu.Serial, r.ecu.Addr, err)
	}
	r.conn = ecunet.NewConn(nc, remoteTimeout)
	return r.conn, nil
}

// Close ends the connection (the next exchange dials again).
func (r *remoteECU) Close() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

// ask sends req and reads the answer of type want into out; a broken
// connection is closed so the next exchange dials again.
func (r *remoteECU) ask(req any, want string, out any) error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	if err := c.Send(req); err != nil {
		r.Close()
		return fmt.Errorf("%w: %s %s: %v", errSecondaryUnreachable, r.ecu.Type, r.ecu.Serial, err)
	}
	if err := c.Recv(want, out); err != nil {
		r.Close()
		return fmt.Errorf("secondary %s %s: %w", r.ecu.Type, r.ecu.Serial, err)
	}
	return nil
}

func msg(typ string) ecunet.Envelope { return ecunet.Envelope{Type: typ, Protocol: ecunet.Version} }

// SecondaryHello asks the secondary at addr (said to be serial) who it is (init and
// replace-ecu, before the vehicle knows it).
func SecondaryHello(serial, addr string) (ecunet.Hello, error) {
	r := &remoteECU{ecu: vehicle.ECUConfig{Serial: serial, Type: "ECU", Addr: addr}}
	defer r.Close()
	return r.Hello()
}

// Hello asks the secondary who it is.
func (r *remoteECU) Hello() (ecunet.Hello, error) {
	var h ecunet.Hello
	err := r.ask(msg(ecunet.TypeHello), ecunet.TypeHello, &h)
	return h, err
}

// Report is the secondary's own signed version report.
func (r *remoteECU) Report() (vehicleauth.SignedECUReport, error) {
	var rep ecunet.Report
	err := r.ask(msg(ecunet.TypeReport), ecunet.TypeReport, &rep)
	return rep.Report, err
}

// LoadRecord is the secondary's boot record as its status tells it.
func (r *remoteECU) LoadRecord() (*bootctl.Record, error) {
	var st ecunet.Status
	if err := r.ask(msg(ecunet.TypeStatus), ecunet.TypeStatus, &st); err != nil {
		return nil, err
	}
	slot := bootctl.Slot(st.ActiveSlot)
	rec := &bootctl.Record{Active: slot, Trial: st.Trial, LastResult: st.LastResult, UpdatedAt: st.UpdatedAt, Failed: st.Failed,
		Slots: map[bootctl.Slot]*bootctl.SlotInfo{}}
	if st.SHA256 != "" {
		rec.Slots[slot] = &bootctl.SlotInfo{Version: st.Version, SHA256: st.SHA256, Length: st.Length, Target: st.Target, ReleaseCounter: st.ReleaseCounter}
	}
	return rec, nil
}

// LoadJournal: a secondary keeps its install journal to itself.
func (r *remoteECU) LoadJournal() (*bootctl.Journal, error) { return nil, nil }

// step runs an install step on the secondary.
func (r *remoteECU) step(req any) (ecunet.Result, error) {
	var res ecunet.Result
	if err := r.ask(req, ecunet.TypeResult, &res); err != nil {
		return res, err
	}
	switch {
	case res.OK:
		return res, nil
	case res.RolledBack:
		return res, fmt.Errorf("%w: %s", client.ErrRolledBack, res.Detail)
	case res.Refused != "":
		return res, fmt.Errorf("%w: secondary %s %s: %s", client.ErrRefused, r.ecu.Type, r.ecu.Serial, res.Refused)
	}
	return res, fmt.Errorf("secondary %s %s: %s", r.ecu.Type, r.ecu.Serial, res.Detail)
}

func (r *remoteECU) Recover(bootctl.Hooks) (string, error) {
	res, err := r.step(msg(ecunet.TypeRecover))
	return res.Detail, err
}

func (r *remoteECU) Trial(bootctl.Hooks) error {
	_, err := r.step(msg(ecunet.TypeTrial))
	return err
}

func (r *remoteECU) Commit(bootctl.Hooks) error {
	_, err := r.step(msg(ecunet.TypeCommit))
	return err
}

func (r *remoteECU) Switch(h bootctl.Hooks) error {
	if err := r.Trial(h); err != nil {
		return err
	}
	return r.Commit(h)
}

func (r *remoteECU) Revert(why string) (bool, error) {
	res, err := r.step(ecunet.Revert{Envelope: msg(ecunet.TypeRevert), Why: why})
	return res.Detail != "", err
}

func (r *remoteECU) Abort() error {
	_, err := r.step(msg(ecunet.TypeAbort))
	return err
}

// install offers the secondary this cycle's metadata and, when it
// accepts, streams the image to it from the source; the secondary
// checks both itself. It returns the bytes sent.
func (r *remoteECU) install(ctx context.Context, o ecunet.Offer, fetch func(w *dataWriter, offset int64) (int64, error)) (int64, error) {
	var v ecunet.Verdict
	if err := r.ask(o, ecunet.TypeVerdict, &v); err != nil {
		return 0, err
	}
	switch {
	case v.Refused != "":
		return 0, fmt.Errorf("%w: secondary %s %s refused its update: %s; nothing installed", client.ErrRefused, r.ecu.Type, r.ecu.Serial, v.Refused)
	case !v.Accept:
		return 0, fmt.Errorf("%w: secondary %s %s took no image (%s), though the director assigned it one; nothing installed", client.ErrRefused, r.ecu.Type, r.ecu.Serial, v.Detail)
	}
	n, err := fetch(&dataWriter{c: r.conn}, v.Offset)
	if err != nil {
		r.Close() // the secondary keeps what arrived; the next offer resumes
		return n, err
	}
	_, err = r.step(msg(ecunet.TypeEnd))
	return n, err
}

// dataWriter sends what is written to it as data frames.
type dataWriter struct{ c *ecunet.Conn }

func (d *dataWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		n := min(len(rest), ecunet.MaxChunk)
		if err := d.c.SendData(rest[:n]); err != nil {
			return len(p) - len(rest), err
		}
		rest = rest[n:]
	}
	return len(p), nil
}

// fetchRemote has the secondary of p verify this cycle's metadata itself
// and, if it takes the image, streams it to it from src: the secondary
// checks the bytes against what it verified. It returns the bytes sent.
func (a *Agent) fetchRemote(ctx context.Context, src Source, p *plan, r *remoteECU, sum string) (int64, error) {
	h, err := r.Hello()
	if err != nil {
		return 0, err
	}
	if h.Serial != p.ecu.Serial || h.VIN != a.V.VIN {
		return 0, fmt.Errorf("%w: the ECU at %s is %s of %s, not %s of %s; nothing installed", client.ErrRefused, p.ecu.Addr, h.Serial, h.VIN, p.ecu.Serial, a.V.VIN)
	}
	o, err := a.offer(ctx, src, h)
	if err != nil {
		return 0, err
	}
	o.JobID = p.jobID
	if err := a.event(ctx, src, p, "downloading", 0, "downloading "+p.path+" to secondary "+p.ecu.Serial); errors.Is(err, errJobCanceled) {
		return 0, errJobCanceled
	}
	name := path.Base(p.path)
	bar := progress.New(a.Progress, "downloading "+name+" to "+p.ecu.Serial, p.tf.Length, 0)
	n, err := r.install(ctx, o, func(w *dataWriter, offset int64) (int64, error) {
		bar.Add(offset)
		res, err := src.Fetch(ctx, Target{Path: p.path, SHA256: sum, Length: p.tf.Length}, w, offset, bar)
		return res.Transferred, err
	})
	bar.Finish()
	switch {
	case errors.Is(err, client.ErrRefused), errors.Is(err, client.ErrRolledBack):
		return n, err
	case errors.Is(err, errSecondaryUnreachable):
		return n, fmt.Errorf("%w: %v (the next update resumes)", client.ErrUnreachable, err)
	case err != nil:
		return n, fmt.Errorf("%w: %s %s: %v (the next update resumes)", client.ErrUnreachable, p.ecu.Type, p.ecu.Serial, err)
	}
	a.Log.Info("secondary verified its image", "ecu", p.ecu.Serial, "target", p.path, "bytes", n)
	return n, nil
}

// offer is this cycle's verified metadata for secondary h: the
// director's, the image repository's for full verification, and the
// roots between the ones it trusts and the vehicle's.
func (a *Agent) offer(ctx context.Context, src Source, h ecunet.Hello) (ecunet.Offer, error) {
	o := ecunet.Offer{Envelope: msg(ecunet.TypeOffer)}
	var err error
	if o.Director, err = a.forward(ctx, src, "director", a.trusted.directed, h.DirectorRoot); err != nil {
		return o, err
	}
	if h.Verification == secondary.Full {
		if o.Image, err = a.forward(ctx, src, "image", a.trusted.images, h.ImageRoot); err != nil {
			return o, err
		}
	}
	return o, nil
}

// forward is one repository's trusted files plus the roots after from.
func (a *Agent) forward(ctx context.Context, src Source, repo string, t *tufclient.Trusted, from int64) (map[string][]byte, error) {
	files, err := t.Files()
	if err != nil {
		return nil, err
	}
	for n := from + 1; n < t.Version(metadata.ROOT); n++ {
		b, err := src.Root(ctx, repo, n)
		if err != nil {
			return nil, fmt.Errorf("%s root v%d for a secondary: %w", repo, n, err)
		}
		files[fmt.Sprintf("%d.root.json", n)] = b
	}
	return files, nil
}
