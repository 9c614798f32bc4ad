package fleetsim

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/roadsign/roadsign/client/wake"
)

// RunConfig paces each vehicle of Run as an agent's daemon paces itself.
type RunConfig struct {
	// Interval is the time between a vehicle's cycles when nothing
	// happens; the first cycle of each vehicle falls at random within it.
	Interval time.Duration
	// After a failed cycle a vehicle tries again after RetryMin, doubling
	// per further failure up to RetryMax.
	RetryMin, RetryMax time.Duration
	// Jitter scales each wait by a random factor in [1-Jitter, 1+Jitter].
	Jitter float64
	// Push: every vehicle keeps an MQTT connection to the broker the
	// server names (client/wake, as the agent) and cycles at once when
	// woken.
	Push bool
}

// Run cycles every vehicle on its own schedule, at most Concurrency at
// once, until ctx ends: agent-like, where Cycle moves the whole fleet in
// lock step.
func (f *Fleet) Run(ctx context.Context, rc RunConfig) {
	f.begin()
	slots := make(chan struct{}, f.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, v := range f.vehicles {
		wg.Go(func() { f.runVehicle(ctx, v, rc, slots) })
	}
	wg.Wait()
}

func (f *Fleet) runVehicle(ctx context.Context, v *Vehicle, rc RunConfig, slots chan struct{}) {
	var woken <-chan struct{}
	if rc.Push {
		woken = wake.Start(ctx, v.api, v.VIN, v.Key, nil, f.cfg.Now, f.cfg.Log).C
	}
	wait := time.Duration(rand.Int64N(int64(max(rc.Interval, time.Millisecond))))
	fails := 0
	for {
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-woken:
			timer.Stop()
			f.wakeups.Add(1)
		}
		select {
		case <-ctx.Done():
			return
		case slots <- struct{}{}:
		}
		err := f.cycleOne(ctx, v)
		<-slots
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			f.failed(v, err)
			fails++
			wait = jittered(min(rc.RetryMin<<min(fails-1, 20), rc.RetryMax), rc.Jitter)
			continue
		}
		fails = 0
		wait = jittered(rc.Interval, rc.Jitter)
	}
}

func jittered(d time.Duration, j float64) time.Duration {
	if j <= 0 {
		return d
	}
	return time.Duration(float64(d) * (1 - j + 2*j*rand.Float64()))
}

// Wakeups is how many wake-ups the vehicles acted on in Run.
func (f *Fleet) Wakeups() int64 { return f.wakeups.Load() }
