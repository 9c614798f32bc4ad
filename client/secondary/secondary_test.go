package secondary_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"crypto/sha256"
	stdjson "encoding/json"

	"github.com/roadsign/roadsign/client/ecunet"
	"github.com/roadsign/roadsign/client/secondary"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
)

var vin = testsupport.VIN("1RSDA0000000000A1")

var (
	factory = testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "1.0.0", ReleaseCounter: 1}
	newer   = testsupport.Image{ECU: "dcm", HardwareID: "DCM-A", Version: "2.0.0", ReleaseCounter: 2}
	dcm     = map[string]string{"DCM1": "DCM-A"}
)

// rig is a repository pair, a DCM secondary serving on loopback, and a
// test double of a primary that sends whatever a test tells it.
type rig struct {
	t    *testing.T
	u    *testsupport.Uptane
	mode string
	addr string
}

func newRig(t *testing.T, mode string) *rig {
	t.Helper()
	u := testsupport.NewUptane(t, vin)
	u.AddImage("dcm-1.0.bin", factory)
	u.AddImage("dcm-2.0.bin", newer)
	u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: dcm})
	u.Publish()
	dir := filepath.Join(t.TempDir(), "dcm")
	now := time.Now
	st, err := secondary.Init(dir, secondary.Config{VIN: vin, ECU: vehicle.ECUConfig{Type: "dcm", Serial: "DCM1", HardwareID: "DCM-A"}, Verification: mode},
		testsupport.ImageFile(t, factory), u.DirectorRoot(), u.ImageRoot(), now)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &secondary.Server{State: st, Log: slog.New(slog.DiscardHandler), Timeout: 5 * time.Second}
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &rig{t: t, u: u, mode: mode, addr: ln.Addr().String()}
}

// dial is one connection of the primary double.
func (r *rig) dial() *ecunet.Conn {
	r.t.Helper()
	nc, err := net.Dial("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	c := ecunet.NewConn(nc, 5*time.Second)
	r.t.Cleanup(func() { c.Close() })
	return c
}

func ask[T any](t *testing.T, c *ecunet.Conn, req any, want string) T {
	t.Helper()
	if err := c.Send(req); err != nil {
		t.Fatal(err)
	}
	var out T
	if err := c.Recv(want, &out); err != nil {
		t.Fatalf("%s: %v", want, err)
	}
	return out
}

func env(typ string) ecunet.Envelope { return ecunet.Envelope{Type: typ, Protocol: ecunet.Version} }

// offer sends metadata; for a full-verification ECU the image
// repository's too.
func (r *rig) offer(c *ecunet.Conn, director, image map[string][]byte) ecunet.Verdict {
	r.t.Helper()
	o := ecunet.Offer{Envelope: env(ecunet.TypeOffer), Director: director}
	if r.mode == secondary.Full {
		o.Image = image
	}
	return ask[ecunet.Verdict](r.t, c, o, ecunet.TypeVerdict)
}

// send streams data after an accepted verdict and returns the result.
func send(t *testing.T, c *ecunet.Conn, data []byte) ecunet.Result {
	t.Helper()
	for len(data) > 0 {
		n := min(len(data), 1000)
		if err := c.SendData(data[:n]); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	return ask[ecunet.Result](t, c, env(ecunet.TypeEnd), ecunet.TypeResult)
}

func (r *rig) status() ecunet.Status {
	return ask[ecunet.Status](r.t, r.dial(), env(ecunet.TypeStatus), ecunet.TypeStatus)
}

// report returns the ECU's next signed report, checked with the key it
// says it has.
func (r *rig) report() (vehicleReport, ecunet.Hello) {
	r.t.Helper()
	c := r.dial()
	h := ask[ecunet.Hello](r.t, c, env(ecunet.TypeHello), ecunet.TypeHello)
	rep := ask[ecunet.Report](r.t, c, env(ecunet.TypeReport), ecunet.TypeReport)
	got, err := rep.Report.Open(h.PublicKey)
	if err != nil {
		r.t.Fatalf("the ECU's report does not verify with its own key: %v", err)
	}
	return vehicleReport{got.ECUSerial, got.InstalledImage.Filename, got.AttackDetected, got.Counter}, h
}

type vehicleReport struct {
	serial, filename, attack string
	counter                  int64
}

// TestSecondaryInstallsWhatTheDirectorSigned: an honest primary offers
// the metadata and the image; the secondary verifies both itself,
// installs, trial-boots, commits and reports, in both verification modes.
func TestSecondaryInstallsWhatTheDirectorSigned(t *testing.T) {
	for _, mode := range []string{secondary.Full, secondary.Partial} {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, mode)
			rep, h := r.report()
			if h.Serial != "DCM1" || h.Verification != mode || rep.counter != 1 || rep.attack != "" {
				t.Fatalf("hello %+v, report %+v", h, rep)
			}
			c := r.dial()
			v := r.offer(c, r.u.Files("director"), r.u.Files("image"))
			if !v.Accept || v.Target != "dcm-2.0.bin" || v.Version != "2.0.0" {
				t.Fatalf("verdict %+v", v)
			}
			if res := send(t, c, r.u.Blob("dcm-2.0.bin")); !res.OK {
				t.Fatalf("image: %+v", res)
			}
			for _, step := range []string{ecunet.TypeTrial, ecunet.TypeCommit} {
				if res := ask[ecunet.Result](t, c, env(step), ecunet.TypeResult); !res.OK {
					t.Fatalf("%s: %+v", step, res)
				}
			}
			if st := r.status(); st.Version != "2.0.0" || st.ActiveSlot != "b" {
				t.Fatalf("status after install: %+v", st)
			}
			if rep, _ := r.report(); rep.filename != "dcm-2.0.bin" || rep.counter != 2 || rep.attack != "" {
				t.Fatalf("report after install: %+v", rep)
			}
			if v := r.offer(r.dial(), r.u.Files("director"), r.u.Files("image")); v.Accept || !strings.Contains(v.Detail, "already running") {
				t.Fatalf("the same offer again: %+v", v)
			}
		})
	}
}

// TestMaliciousPrimary: a primary that sends the secondary an image and
// metadata of its choosing never gets it installed, in full and partial
// verification; the secondary's next signed report says what it refused,
// and it keeps serving.
func TestMaliciousPrimary(t *testing.T) {
	type attack struct {
		name string
		// run plays the primary; it returns what the secondary said.
		run func(r *rig) string
	}
	attacks := []attack{
		{"image bytes other than the director signed", func(r *rig) string {
			c := r.dial()
			v := r.offer(c, r.u.Files("director"), r.u.Files("image"))
			if !v.Accept {
				return "offer: " + v.Refused
			}
			evil := append([]byte(nil), r.u.Blob("dcm-2.0.bin")...)
			evil[len(evil)-1] ^= 0xff
			return send(r.t, c, evil).Refused
		}},
		{"more bytes than signed", func(r *rig) string {
			c := r.dial()
			v := r.offer(c, r.u.Files("director"), r.u.Files("image"))
			if !v.Accept {
				return "offer: " + v.Refused
			}
			return send(r.t, c, append(r.u.Blob("dcm-2.0.bin"), 0)).Refused
		}},
		{"director targets signed by a key the director root does not list", func(r *rig) string {
			files := r.u.Files("director")
			forge(r.t, files, "dcm-2.0.bin", r.u.Blob("dcm-2.0.bin"))
			return r.offer(r.dial(), files, r.u.Files("image")).Refused
		}},
		{"director metadata for another VIN", func(r *rig) string {
			r.u.Direct(testsupport.VIN("1RSDA0000000000B9"), testsupport.Assign{Path: "dcm-2.0.bin", ECUs: dcm})
			r.u.Publish()
			return r.offer(r.dial(), r.u.Files("director"), r.u.Files("image")).Refused
		}},
		{"a director entry with a hash the image repository does not have", func(r *rig) string {
			r.u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: dcm, SHA256: make([]byte, 32)})
			r.u.Publish()
			c := r.dial()
			v := r.offer(c, r.u.Files("director"), r.u.Files("image"))
			if !v.Accept { // full verification: at the offer
				return v.Refused
			}
			return send(r.t, c, r.u.Blob("dcm-2.0.bin")).Refused // partial: at the bytes
		}},
		{"metadata older than the ECU already accepted", func(r *rig) string {
			old, oldImages := r.u.Files("director"), r.u.Files("image")
			r.u.Publish()
			r.u.Publish()
			if v := r.offer(r.dial(), r.u.Files("director"), r.u.Files("image")); !v.Accept {
				return "the current metadata was not accepted: " + v.Refused
			}
			return r.offer(r.dial(), old, oldImages).Refused
		}},
	}
	for _, mode := range []string{secondary.Full, secondary.Partial} {
		for _, a := range attacks {
			t.Run(mode+"/"+a.name, func(t *testing.T) {
				r := newRig(t, mode)
				got := a.run(r)
				if got == "" {
					t.Fatal("the secondary did not refuse")
				}
				t.Logf("refused: %s", got)
				if st := r.status(); st.Version != "1.0.0" || st.ActiveSlot != "a" {
					t.Fatalf("the secondary changed: %+v", st)
				}
				if res := ask[ecunet.Result](t, r.dial(), env(ecunet.TypeTrial), ecunet.TypeResult); res.OK {
					t.Fatal("a trial boot went ahead after the refusal")
				}
				if rep, _ := r.report(); rep.attack == "" {
					t.Fatalf("the signed report does not say what was refused: %+v", rep)
				}
			})
		}
	}
}

// forge replaces the newest director targets in files with one signed by
// a key of the attacker's, assigning data at path to DCM1.
func forge(t *testing.T, files map[string][]byte, path string, data []byte) {
	t.Helper()
	newest := int64(0)
	for name := range files {
		var v int64
		if _, err := fmt.Sscanf(name, "%d.targets.json", &v); err == nil && v > newest {
			newest = v
		}
	}
	k, err := keys.Generate(filepath.Join(t.TempDir(), "attacker.key"))
	if err != nil {
		t.Fatal(err)
	}
	tm := metadata.Targets(time.Now().Add(time.Hour).UTC().Truncate(time.Second))
	tm.Signed.Version = newest
	tm.Signed.UnrecognizedFields = map[string]any{"custom": map[string]any{"vin": vin}}
	custom := json(`{"ecuIdentifiers": {"DCM1": {"hardwareId": "DCM-A"}}, "ecuType": "dcm", "version": "9.0.0", "releaseCounter": 9}`)
	sum := sha256sum(data)
	tm.Signed.Targets = map[string]*metadata.TargetFiles{path: {Length: int64(len(data)), Hashes: metadata.Hashes{"sha256": sum}, Custom: &custom, Path: path}}
	if err := meta.Sign(tm, k); err != nil {
		t.Fatal(err)
	}
	raw, err := tm.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	files[fmt.Sprintf("%d.targets.json", newest)] = raw
}

// TestMalformedFramesAreRefusedCleanly: an oversized frame, an unknown
// frame kind, image bytes without an accepted offer and an unknown
// message each end that connection with an error message; the ECU is
// untouched and serves the next connection.
func TestMalformedFramesAreRefusedCleanly(t *testing.T) {
	r := newRig(t, secondary.Partial)
	raw := func(kind byte, n uint32, payload []byte) string {
		nc, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		var h [5]byte
		h[0] = kind
		binary.BigEndian.PutUint32(h[1:], n)
		nc.Write(append(h[:], payload...))
		c := ecunet.NewConn(nc, 5*time.Second)
		var e ecunet.Error
		err = c.Recv(ecunet.TypeError, &e)
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("frame %q of %d bytes: %v", kind, n, err)
		}
		if _, _, err := c.Next(); err == nil {
			t.Fatal("the connection stayed open after a malformed frame")
		}
		return err.Error()
	}
	raw(ecunet.KindMessage, ecunet.MaxMessage+1, nil)
	raw(ecunet.KindData, ecunet.MaxChunk+1, nil)
	raw('X', 3, []byte("abc"))
	raw(ecunet.KindData, 3, []byte("abc"))
	raw(ecunet.KindMessage, 2, []byte("{}"))
	raw(ecunet.KindMessage, 22, []byte(`{"type":"format-disk"}`))
	// Nothing assigned: image bytes sent anyway are refused.
	r.u.Direct("", testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM9": "DCM-A"}})
	r.u.Publish()
	c := r.dial()
	if v := r.offer(c, r.u.Files("director"), r.u.Files("image")); v.Accept || v.Refused != "" {
		t.Fatalf("an offer assigning nothing to this ECU: %+v", v)
	}
	c.SendData(r.u.Blob("dcm-2.0.bin")[:100])
	var res ecunet.Result
	if err := c.Recv(ecunet.TypeResult, &res); err == nil || !strings.Contains(err.Error(), "without an accepted offer") {
		t.Fatalf("image bytes without an accepted offer: %v", err)
	}
	if st := r.status(); st.Version != "1.0.0" {
		t.Fatalf("the ECU changed: %+v", st)
	}
}

func json(s string) stdjson.RawMessage { return stdjson.RawMessage(s) }

func sha256sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
