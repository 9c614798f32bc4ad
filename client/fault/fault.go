// Package fault simulates the failures a vehicle meets during an update,
// for tests and for dealers' training benches: corrupt or truncated
// downloads, network drops, flash write errors, power loss in any phase,
// images that fail their boot check, and the faults behind "connected
// services do not work": no cellular signal, a lost bus connection to the
// head unit, a corrupted DCM slot.
package fault

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/roadsign/roadsign/client/bootctl"
)

// Phases at which power can be lost.
var Phases = []string{"download", "write", "switch", "commit"}

// Set is the faults to simulate in one run.
type Set struct {
	CorruptDownload  bool
	TruncateDownload bool
	FlashError       bool
	BootFail         bool
	// NetworkDropPct > 0 drops the connection when that share of the image
	// has arrived; the network stays down for the rest of the run.
	NetworkDropPct int
	// PowerLoss names the phase ("" for none) and, for download and
	// write, the share of the image at which power goes.
	PowerLoss    string
	PowerLossPct int
	// PowerLossSkip, for switch and commit, lets the power stay on the
	// first PowerLossSkip times the phase is reached in a cycle (each ECU
	// of an update set reaches it once).
	PowerLossSkip int
	// CANLoss: the head unit does not answer on the vehicle bus.
	CANLoss bool
	// SignalBars, if not nil, is the DCM's cellular signal, 0 to 5; at 0
	// nothing reaches the server. Without it the bench modem reads 4.
	SignalBars *int
	// CorruptActive flips bytes in the DCM's active slot before the cycle.
	CorruptActive bool
	// CorruptDelta and TruncateDelta damage a delta as it downloads
	// (the full image is untouched): the agent falls back to the full
	// image in the same cycle.
	CorruptDelta, TruncateDelta bool
	// RTCOffset or RTCDate set the vehicle's clock wrong (rtc=+DURATION,
	// rtc=-DURATION, rtc=YYYY-MM-DD): what it signs and checks against.
	RTCOffset time.Duration
	RTCDate   time.Time
	// Attestation damages the cycle's time attestation (attestation=...):
	// stale (before what the vehicle trusts), wrong-nonce (replayed from
	// another request) or bad-sig (signed by another key).
	Attestation string
	// Kill ends the process at once; the default sends SIGKILL to itself,
	// so nothing is cleaned up, as with a real power loss.
	Kill func()
}

// ErrNetworkDrop is the simulated loss of connectivity.
var ErrNetworkDrop = errors.New("simulated network drop")

// ErrFlash is the simulated flash write failure.
var ErrFlash = errors.New("simulated flash write error")

// Parse reads a comma-separated list such as "network-drop:50,boot-fail".
func Parse(s string) (Set, error) {
	var f Set
	if strings.TrimSpace(s) == "" {
		return f, nil
	}
	for _, item := range strings.Split(s, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(item), "attestation="); ok {
			if v != "stale" && v != "wrong-nonce" && v != "bad-sig" {
				return f, fmt.Errorf("attestation=%q: want attestation=stale, attestation=wrong-nonce or attestation=bad-sig", v)
			}
			f.Attestation = v
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(item), "rtc="); ok {
			if err := f.parseRTC(v); err != nil {
				return f, err
			}
			continue
		}
		parts := strings.Split(strings.TrimSpace(item), ":")
		switch parts[0] {
		case "corrupt-download":
			f.CorruptDownload = true
		case "truncate-download":
			f.TruncateDownload = true
		case "flash-error":
			f.FlashError = true
		case "boot-fail":
			f.BootFail = true
		case "network-drop":
			if len(parts) != 2 {
				return f, fmt.Errorf("network-drop needs a percentage: network-drop:PCT")
			}
			pct, err := percent(parts[1])
			if err != nil {
				return f, fmt.Errorf("network-drop: %v", err)
			}
			f.NetworkDropPct = max(pct, 1)
		case "power-loss":
			if len(parts) < 2 || len(parts) > 3 {
				return f, fmt.Errorf("power-loss needs a phase: power-loss:PHASE[:PCT] with PHASE one of %s", strings.Join(Phases, ", "))
			}
			if !contains(Phases, parts[1]) {
				return f, fmt.Errorf("power-loss phase %q: want one of %s", parts[1], strings.Join(Phases, ", "))
			}
			f.PowerLoss, f.PowerLossPct = parts[1], 50
			if len(parts) == 3 {
				pct, err := percent(parts[2])
				if err != nil {
					return f, fmt.Errorf("power-loss: %v", err)
				}
				f.PowerLossPct = pct
			}
		case "can-loss":
			f.CANLoss = true
		case "corrupt-active":
			f.CorruptActive = true
		case "corrupt-delta":
			f.CorruptDelta = true
		case "truncate-delta":
			f.TruncateDelta = true
		case "signal":
			n := -1
			if len(parts) == 2 && len(parts[1]) == 1 {
				n, _ = strconv.Atoi(parts[1])
			}
			if n < 0 || n > 5 {
				return f, fmt.Errorf("signal needs bars from 0 to 5: signal:BARS")
			}
			f.SignalBars = &n
		default:
			return f, fmt.Errorf("unknown fault %q; want %s", item, Names)
		}
	}
	return f, nil
}

// Names lists every fault, as --simulate takes them.
const Names = "corrupt-download, truncate-download, corrupt-delta, truncate-delta, network-drop:PCT, power-loss:PHASE[:PCT], flash-error, boot-fail, signal:BARS, can-loss, corrupt-active, rtc=+DURATION, rtc=-DURATION, rtc=YYYY-MM-DD or attestation=stale|wrong-nonce|bad-sig"

func (f *Set) parseRTC(v string) error {
	if d, err := time.Parse(time.DateOnly, v); err == nil {
		f.RTCDate = d
		return nil
	}
	if (strings.HasPrefix(v, "+") || strings.HasPrefix(v, "-")) && len(v) > 1 {
		if d, err := time.ParseDuration(v); err == nil {
			f.RTCOffset = d
			return nil
		}
		for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "y": 365 * 24 * time.Hour} {
			if n, err := strconv.Atoi(strings.TrimSuffix(v, suffix)); err == nil && strings.HasSuffix(v, suffix) {
				f.RTCOffset = time.Duration(n) * unit
				return nil
			}
		}
	}
	return fmt.Errorf("rtc=%q: want rtc=+DURATION, rtc=-DURATION (such as rtc=+20m) or rtc=YYYY-MM-DD", v)
}

// Clock is now as the vehicle's (simulated) real-time clock reads it.
func (f Set) Clock(now func() time.Time) func() time.Time {
	switch {
	case !f.RTCDate.IsZero():
		start := now()
		return func() time.Time { return f.RTCDate.Add(now().Sub(start)) }
	case f.RTCOffset != 0:
		return func() time.Time { return now().Add(f.RTCOffset) }
	}
	return now
}

func percent(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 100 {
		return 0, fmt.Errorf("%q is not a percentage from 0 to 100", s)
	}
	return n, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Any reports whether any fault is set.
func (f Set) Any() bool {
	return f.CorruptDownload || f.TruncateDownload || f.FlashError || f.BootFail || f.NetworkDropPct > 0 || f.PowerLoss != "" ||
		f.CANLoss || f.SignalBars != nil || f.CorruptActive || f.CorruptDelta || f.TruncateDelta || f.RTCOffset != 0 || !f.RTCDate.IsZero() || f.Attestation != ""
}

func (f Set) kill() {
	if f.Kill != nil {
		f.Kill()
		return
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // never return: the process is gone
}

// Body wraps a download body for a target of the given length, starting at
// offset off. It returns nil when no download fault is set.
func (f Set) Body(length int64) func(r io.Reader, off int64) io.Reader {
	if !f.CorruptDownload && !f.TruncateDownload && f.NetworkDropPct == 0 && f.PowerLoss != "download" {
		return nil
	}
	return func(r io.Reader, off int64) io.Reader {
		b := &body{r: r, pos: off, corruptAt: -1, endAt: -1, dropAt: -1, killAt: -1, kill: f.kill}
		if f.CorruptDownload {
			b.corruptAt = length / 2
		}
		if f.TruncateDownload {
			b.endAt = length * 9 / 10
		}
		if f.NetworkDropPct > 0 && f.NetworkDropPct < 100 {
			b.dropAt = length * int64(f.NetworkDropPct) / 100
		}
		if f.PowerLoss == "download" {
			b.killAt = length * int64(f.PowerLossPct) / 100
		}
		return b
	}
}

// DeltaBody is Body for a delta of the given length: the delta faults
// (corrupt-delta, truncate-delta) and the network and power faults.
func (f Set) DeltaBody(length int64) func(r io.Reader, off int64) io.Reader {
	g := f
	g.CorruptDownload, g.TruncateDownload = f.CorruptDelta, f.TruncateDelta
	return g.Body(length)
}

// body applies download faults at absolute image offsets.
type body struct {
	r                                io.Reader
	pos                              int64
	corruptAt, endAt, dropAt, killAt int64
	kill                             func()
}

func (b *body) Read(p []byte) (int, error) {
	limit := int64(len(p))
	for _, at := range []int64{b.endAt, b.dropAt, b.killAt} {
		if at >= b.pos && at-b.pos < limit {
			limit = at - b.pos
		}
	}
	switch {
	case b.pos == b.killAt:
		b.kill()
	case b.pos == b.dropAt:
		return 0, ErrNetworkDrop
	case b.pos == b.endAt:
		return 0, io.EOF // the server's file "ends" here
	}
	n, err := b.r.Read(p[:limit])
	if b.corruptAt >= b.pos && b.corruptAt < b.pos+int64(n) {
		p[b.corruptAt-b.pos] ^= 0x5a
	}
	b.pos += int64(n)
	return n, err
}

// Hooks returns the boot-control hooks for the switch, commit and write
// power losses and for boot-fail.
func (f Set) Hooks() bootctl.Hooks {
	var h bootctl.Hooks
	if f.PowerLoss != "" && f.PowerLoss != "download" {
		reached := 0
		h.At = func(point string) {
			if point != f.PowerLoss || (point == "write" && f.PowerLossPct < 100) {
				return
			}
			if reached++; reached > f.PowerLossSkip {
				f.kill()
			}
		}
	}
	if f.BootFail {
		h.FailBoot = func() error {
			return errors.New("simulated boot failure: watchdog reset before the health check passed")
		}
	}
	return h
}

// WriteHook returns the flash-write hook for a target of the given length,
// called before each write of n bytes at off: flash-error fails the write
// that would reach the middle of the image, and power-loss:write:PCT
// (PCT < 100) kills the process before the write that would reach PCT.
// The whole range counts, however large one write is.
func (f Set) WriteHook(length int64) func(off, n int64) error {
	if !f.FlashError && !(f.PowerLoss == "write" && f.PowerLossPct < 100) {
		return nil
	}
	return func(off, n int64) error {
		if f.PowerLoss == "write" && off+n > length*int64(f.PowerLossPct)/100 {
			f.kill()
		}
		if f.FlashError && off+n > length/2 {
			return ErrFlash
		}
		return nil
	}
}

// ErrNoSignal is what every request meets at 0 bars of signal.
var ErrNoSignal = errors.New("simulated loss of cellular signal (0 bars)")

// Transport is base, unless the simulated signal is 0 bars: then no
// request reaches the server.
func (f Set) Transport(base http.RoundTripper) http.RoundTripper {
	if f.SignalBars == nil || *f.SignalBars > 0 {
		return base
	}
	return noSignal{}
}

type noSignal struct{}

func (noSignal) RoundTrip(*http.Request) (*http.Response, error) { return nil, ErrNoSignal }
