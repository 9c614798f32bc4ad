package secondary

import (
	"context"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/client/ecunet"
	"github.com/roadsign/roadsign/client/tufclient"
)

// Server answers one primary at a time over the vehicle network.
type Server struct {
	State *State
	Log   *slog.Logger
	// Hooks simulate failures at the install's phase boundaries.
	Hooks bootctl.Hooks
	// Timeout bounds each frame (0: 30 s); a primary that goes quiet is
	// dropped and its download resumes on the next connection.
	Timeout time.Duration

	mu sync.Mutex // one connection at a time: the slots are one ECU's
}

// Serve accepts connections on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	var cur net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			if cur != nil {
				cur.Close()
			}
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		// The primary reconnected: the connection before is dead to it.
		if cur != nil {
			cur.Close()
		}
		cur = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(ctx, c)
		}()
	}
}

// handle runs one connection; a malformed frame or message ends it (the
// error is sent first when possible), the ECU is untouched.
func (s *Server) handle(ctx context.Context, nc net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	c := ecunet.NewConn(nc, timeout)
	defer c.Close()
	for {
		kind, p, err := c.Next()
		if err != nil {
			if errors.Is(err, ecunet.ErrProtocol) {
				s.Log.Warn("refused a malformed frame from the primary", "remote", nc.RemoteAddr().String(), "err", err)
				c.Send(ecunet.Error{Envelope: ecunet.Envelope{Type: ecunet.TypeError}, Message: err.Error()})
			}
			return
		}
		if kind != ecunet.KindMessage {
			s.refuse(c, "image bytes sent without an accepted offer")
			return
		}
		var env ecunet.Envelope
		if err := json.Unmarshal(p, &env); err != nil {
			s.refuse(c, "not a message: "+err.Error())
			return
		}
		reply, err := s.dispatch(ctx, c, env.Type, p)
		if err != nil {
			s.refuse(c, err.Error())
			return
		}
		if err := c.Send(reply); err != nil {
			return
		}
	}
}

func (s *Server) refuse(c *ecunet.Conn, why string) {
	s.Log.Warn("refused a request from the primary", "why", why)
	c.Send(ecunet.Error{Envelope: ecunet.Envelope{Type: ecunet.TypeError}, Message: why})
}

// dispatch answers one message; an error ends the connection.
func (s *Server) dispatch(ctx context.Context, c *ecunet.Conn, typ string, p []byte) (any, error) {
	st := s.State
	switch typ {
	case ecunet.TypeHello:
		return s.hello()
	case ecunet.TypeReport:
		sr, err := st.Report()
		return ecunet.Report{Envelope: ecunet.Envelope{Type: ecunet.TypeReport}, Report: sr}, err
	case ecunet.TypeStatus:
		return st.Status()
	case ecunet.TypeOffer:
		var o ecunet.Offer
		if err := json.Unmarshal(p, &o); err != nil {
			return nil, fmt.Errorf("offer: %v", err)
		}
		return s.offer(ctx, c, o)
	case ecunet.TypeTrial:
		err := st.ECU().Trial(s.Hooks)
		return result(err)
	case ecunet.TypeCommit:
		err := st.ECU().Commit(s.Hooks)
		if err == nil {
			err = st.clearAttack()
		}
		return result(err)
	case ecunet.TypeRevert:
		var r ecunet.Revert
		json.Unmarshal(p, &r)
		did, err := st.ECU().Revert(r.Why)
		res, err := result(err)
		if did {
			res.Detail = "back on its old image: " + r.Why
		}
		return res, err
	case ecunet.TypeAbort:
		return result(st.ECU().Abort())
	case ecunet.TypeRecover:
		did, err := st.ECU().Recover(s.Hooks)
		res, err := result(err)
		if res.Detail == "" {
			res.Detail = did
		}
		return res, err
	}
	return nil, fmt.Errorf("unknown message type %q", typ)
}

// result turns an install step's outcome into its answer: a rolled back
// trial or a refused image is an answer, anything else ends the request.
func result(err error) (ecunet.Result, error) {
	r := ecunet.Result{Envelope: ecunet.Envelope{Type: ecunet.TypeResult}, OK: err == nil}
	switch {
	case err == nil:
	case errors.Is(err, client.ErrRolledBack):
		r.RolledBack, r.Detail = true, err.Error()
	case errors.Is(err, client.ErrRefused):
		r.Refused = err.Error()
	default:
		r.Detail = err.Error()
	}
	return r, nil
}

func (s *Server) hello() (ecunet.Hello, error) {
	st := s.State
	h := ecunet.Hello{Envelope: ecunet.Envelope{Type: ecunet.TypeHello, Protocol: ecunet.Version}, VIN: st.VIN, Serial: st.Config.ECU.Serial,
		ECUType: st.Config.ECU.Type, HardwareID: st.Config.ECU.HardwareID, PublicKey: st.PublicKey(), Verification: st.Verification}
	h.DirectorRoot = tufclient.CachedVersion(st.DirectorDir(), metadata.ROOT)
	if st.Verification == Full {
		h.ImageRoot = tufclient.CachedVersion(st.ImageDir(), metadata.ROOT)
	}
	return h, nil
}

// offer verifies what the primary offers and, when this ECU has an
// assignment, takes the image: data frames of exactly its length, then
// end. Nothing reaches the inactive slot before the metadata verified;
// nothing is switched to before the bytes matched the signed length and
// sha256. A refusal is kept for the ECU's next signed report.
func (s *Server) offer(ctx context.Context, c *ecunet.Conn, o ecunet.Offer) (any, error) {
	st := s.State
	v := ecunet.Verdict{Envelope: ecunet.Envelope{Type: ecunet.TypeVerdict}}
	a, err := st.verify(ctx, o.Director, o.Image)
	if errors.Is(err, client.ErrRefused) {
		s.Log.Warn("refused the primary's offer", "err", err)
		v.Refused = err.Error()
		return v, st.noteAttack(err.Error())
	}
	if err != nil {
		return nil, err
	}
	if a == nil {
		v.Detail = "no update assigned"
		return v, nil
	}
	rec, err := st.ECU().LoadRecord()
	if err != nil {
		return nil, err
	}
	if cur := rec.Slots[rec.Active]; cur != nil && cur.SHA256 == a.SHA256 && !rec.Trial {
		v.Detail = "already running the assigned image"
		v.Target, v.SHA256, v.Length, v.Version = a.Path, a.SHA256, a.Length, a.Version
		return v, st.clearAttack()
	}
	w, err := st.ECU().Begin(bootctl.Journal{Target: a.Path, Length: a.Length, SHA256: a.SHA256, Version: a.Version,
		ReleaseCounter: a.Counter, JobID: a.JobID})
	if err != nil {
		return nil, err
	}
	v.Accept, v.Target, v.Length, v.SHA256, v.Version, v.Offset = true, a.Path, a.Length, a.SHA256, a.Version, w.Offset()
	if err := c.Send(v); err != nil {
		w.Pause()
		return nil, err
	}
	return s.receive(c, w)
}

// receive writes the image's data frames into the inactive slot up to
// end, then checks its length and sha256 against the verified
// assignment. A connection that ends first keeps what arrived (the next
// offer resumes); bytes past the signed length, or a mismatch, are
// refused and the slot wiped.
func (s *Server) receive(c *ecunet.Conn, w *bootctl.Writer) (any, error) {
	st := s.State
	for {
		kind, p, err := c.Next()
		if err != nil {
			w.Pause()
			return nil, err
		}
		if kind == ecunet.KindData {
			if _, err := w.Write(p); err != nil {
				w.Pause()
				st.ECU().Abort()
				if errors.Is(err, client.ErrRefused) {
					st.noteAttack(err.Error())
					return result(err)
				}
				return nil, err
			}
			continue
		}
		var env ecunet.Envelope
		if json.Unmarshal(p, &env) != nil || env.Type != ecunet.TypeEnd {
			w.Pause()
			return nil, fmt.Errorf("a %q message in the middle of the image; want data frames, then end", env.Type)
		}
		err = w.Finish(s.Hooks)
		if errors.Is(err, client.ErrRefused) {
			s.Log.Warn("refused the image the primary sent", "err", err)
			st.noteAttack(err.Error())
		}
		return result(err)
	}
}
