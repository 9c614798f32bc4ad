package accounts

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/argon2"

	"github.com/roadsign/roadsign/server"
)

// argon2id parameters (RFC 9106's second recommendation, memory-light).
const (
	argonTime    = 3
	argonMemory  = 64 << 10 // KiB
	argonThreads = 2
	argonKeyLen  = 32
)

// Passwords hashes and checks owner passwords at a bounded cost: each
// argon2id computation takes 64 MiB, so at most a fixed number run at
// once and the rest wait (briefly) for a slot. A check for an account
// that does not exist costs the same as for one that does.
type Passwords struct {
	slots  chan struct{}
	wait   time.Duration
	hashes prometheus.Counter
}

// NewPasswords allows concurrency hashes at once (0: one per CPU, so
// 64 MiB each); reg (may be nil) gets roadsign_password_hashes_total.
func NewPasswords(concurrency int, reg prometheus.Registerer) *Passwords {
	if concurrency <= 0 {
		concurrency = runtime.NumCPU()
	}
	p := &Passwords{slots: make(chan struct{}, concurrency), wait: 5 * time.Second,
		hashes: prometheus.NewCounter(prometheus.CounterOpts{Name: "roadsign_password_hashes_total", Help: "argon2id computations (logins, password changes), for known and unknown names alike."})}
	if reg != nil {
		reg.MustRegister(p.hashes)
	}
	return p
}

// dummyHash is what a check for a name with no account compares against:
// a hash with our parameters, so the check costs exactly what a real one
// does. No password is its preimage (nor need be: the check answers false
// for an unknown name whatever the comparison says), so it is made of
// zeros rather than computed at start, which would cost every server
// start 64 MiB and an argon2id run.
var dummyHash = fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
	base64.RawStdEncoding.EncodeToString(make([]byte, 16)), base64.RawStdEncoding.EncodeToString(make([]byte, argonKeyLen)))

// ErrBusy: every hashing slot stayed taken for the whole wait.
var ErrBusy = server.Errorf(server.KindUnavailable, "the server is busy checking passwords; try again in a few seconds")

func (p *Passwords) run(ctx context.Context, fn func()) error {
	ctx, cancel := context.WithTimeout(ctx, p.wait)
	defer cancel()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ErrBusy
	}
	defer func() { <-p.slots }()
	p.hashes.Inc()
	fn()
	// Hand the 64 MiB back at once, before the slot frees: otherwise it
	// lingers until the collector's goal (twice the live heap, so twice
	// every slot's 64 MiB) and a flood of log-ins ratchets memory up.
	debug.FreeOSMemory()
	return nil
}

// Hash returns an argon2id hash of password in the PHC string format.
func (p *Passwords) Hash(ctx context.Context, password string) (string, error) {
	var h string
	err := p.run(ctx, func() { h = hashPassword(password) })
	return h, err
}

// Check reports whether password matches hash; an empty hash (no such
// account) is checked against a dummy, so it takes just as long.
func (p *Passwords) Check(ctx context.Context, hash, password string) (bool, error) {
	known := hash != ""
	if !known {
		hash = dummyHash
	}
	var ok bool
	err := p.run(ctx, func() { ok = checkPassword(hash, password) })
	return ok && known, err
}

func hashPassword(password string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// checkPassword compares in constant time; a hash asking for more memory
// or time than ours is refused rather than computed.
func checkPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m > argonMemory || t > argonTime || p == 0 {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}
