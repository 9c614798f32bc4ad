// Package connlimit bounds what clients can hold of a listening socket:
// connections in total and per client address, an optional deadline for a
// new connection's first exchange, and, near the total cap, idle
// keep-alive connections closed so that a fresh client is still served.
// The server's HTTP listener and its MQTT broker each sit behind one, so
// neither can be starved of connections (or of the process's file
// descriptors) by one address.
package connlimit

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// Config is what a Listener allows.
type Config struct {
	// Max is the most connections open at once (0: no cap). With Wait, a
	// connection past it waits in the kernel's backlog until one closes;
	// without, it is closed at once.
	Max  int
	Wait bool
	// PerAddress is the most connections open at once from one client
	// IP address (0: no cap); more are closed at once.
	PerAddress int
	// Exempt, if set, names addresses PerAddress does not apply to (the
	// load balancers in front of the server).
	Exempt func(net.IP) bool
	// FirstDeadline, if positive, is set as the read and write deadline
	// of each new connection: the protocol must clear it (or set its
	// own) once the client has said who it is.
	FirstDeadline time.Duration
	// OnRefuse, if set, hears of each connection closed for a cap.
	OnRefuse func(reason string)
}

// Listener wraps a net.Listener with the limits of its Config.
type Listener struct {
	net.Listener
	cfg   Config
	slots chan struct{} // one per open connection (nil: no total cap)

	done      chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	perIP map[string]int
	idle  map[*Conn]time.Time // keep-alive connections between requests
}

// New wraps l.
func New(l net.Listener, cfg Config) *Listener {
	out := &Listener{Listener: l, cfg: cfg, done: make(chan struct{}), perIP: map[string]int{}, idle: map[*Conn]time.Time{}}
	if cfg.Max > 0 {
		out.slots = make(chan struct{}, cfg.Max)
	}
	return out
}

// Accept returns the next connection within the limits; connections over
// a cap are closed here and never reach the caller.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		if err := l.acquire(); err != nil {
			return nil, err
		}
		c, err := l.Listener.Accept()
		if err != nil {
			l.release()
			return nil, err
		}
		ip := remoteIP(c)
		if !l.admit(ip) {
			c.Close()
			l.release()
			l.refuse("per-address")
			continue
		}
		if l.cfg.FirstDeadline > 0 {
			c.SetDeadline(time.Now().Add(l.cfg.FirstDeadline))
		}
		return &Conn{Conn: c, l: l, ip: ip}, nil
	}
}

// acquire takes a connection slot. Past nine tenths of the cap it first
// closes the longest-idle keep-alive connections; at the cap it waits
// (Wait) or takes the slot anyway, for Accept to refuse the connection.
func (l *Listener) acquire() error {
	if l.slots == nil {
		return nil
	}
	if high := l.cfg.Max - l.cfg.Max/10; len(l.slots) >= high {
		l.shed(len(l.slots) - high + 1)
	}
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	if !l.cfg.Wait {
		// Accept the connection only to close it: the client hears at
		// once rather than waiting in the backlog.
		c, err := l.Listener.Accept()
		if err != nil {
			return err
		}
		c.Close()
		l.refuse("total")
		return l.acquire()
	}
	for {
		select {
		case l.slots <- struct{}{}:
			return nil
		case <-l.done:
			return net.ErrClosed
		case <-time.After(50 * time.Millisecond):
			l.shed(1) // a busy connection may have gone idle since
		}
	}
}

// Close stops accepting; open connections stay open.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *Listener) release() {
	if l.slots != nil {
		<-l.slots
	}
}

func (l *Listener) refuse(reason string) {
	if l.cfg.OnRefuse != nil {
		l.cfg.OnRefuse(reason)
	}
}

// admit counts a connection from ip, or reports that ip is at its cap.
func (l *Listener) admit(ip net.IP) bool {
	key := ip.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.PerAddress > 0 && (l.cfg.Exempt == nil || !l.cfg.Exempt(ip)) && l.perIP[key] >= l.cfg.PerAddress {
		return false
	}
	l.perIP[key]++
	return true
}

// shed closes up to n of the longest-idle connections.
func (l *Listener) shed(n int) {
	l.mu.Lock()
	victims := make([]*Conn, 0, n)
	for range n {
		var oldest *Conn
		var at time.Time
		for c, t := range l.idle {
			if oldest == nil || t.Before(at) {
				oldest, at = c, t
			}
		}
		if oldest == nil {
			break
		}
		delete(l.idle, oldest)
		victims = append(victims, oldest)
	}
	l.mu.Unlock()
	for _, c := range victims {
		c.Close()
		l.refuse("idle-shed")
	}
}

// SetIdle marks c (a connection this listener returned, or a *tls.Conn
// over one) idle between requests, or busy again. http.Server's
// ConnState hook calls it.
func (l *Listener) SetIdle(c net.Conn, idle bool) {
	own := unwrap(c)
	if own == nil || own.l != l {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if idle && !own.isClosed() {
		l.idle[own] = time.Now()
	} else {
		delete(l.idle, own)
	}
}

// Open is the number of connections open now.
func (l *Listener) Open() int {
	if l.slots == nil {
		return -1
	}
	return len(l.slots)
}

func unwrap(c net.Conn) *Conn {
	for {
		switch t := c.(type) {
		case *Conn:
			return t
		case *tls.Conn:
			c = t.NetConn()
		default:
			return nil
		}
	}
}

// Conn is a connection that gives its slots back when closed.
type Conn struct {
	net.Conn
	l    *Listener
	ip   net.IP
	once sync.Once
	done bool
}

func (c *Conn) isClosed() bool { return c.done }

// Close closes the connection and frees its slots (once).
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		l := c.l
		l.mu.Lock()
		c.done = true
		delete(l.idle, c)
		key := c.ip.String()
		if l.perIP[key]--; l.perIP[key] <= 0 {
			delete(l.perIP, key)
		}
		l.mu.Unlock()
		l.release()
	})
	return err
}

func remoteIP(c net.Conn) net.IP {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP
	}
	return net.IPv4zero
}

// ExemptList returns an Exempt function for addresses and CIDRs (the
// server's --trusted-proxies); entries that parse as neither are skipped
// (the command line validates them).
func ExemptList(entries []string) func(net.IP) bool {
	var nets []*net.IPNet
	for _, e := range entries {
		if ip := net.ParseIP(e); ip != nil {
			bits := 32
			if ip.To4() == nil {
				bits = 128
			}
			nets = append(nets, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
			continue
		}
		if _, n, err := net.ParseCIDR(e); err == nil {
			nets = append(nets, n)
		}
	}
	if len(nets) == 0 {
		return nil
	}
	return func(ip net.IP) bool {
		for _, n := range nets {
			if n.Contains(ip) {
				return true
			}
		}
		return false
	}
}

// FitOpenFiles fits an HTTP cap and a broker cap into an open-file limit,
// keeping reserve descriptors for everything else: the broker gets at most
// a third of the rest, HTTP at most what the broker leaves. Each cap is at
// least 1.
func FitOpenFiles(limit int64, reserve, httpWant, mqttWant int) (httpMax, mqttMax int) {
	avail := max(limit-int64(reserve), 3)
	mqttMax = int(min(int64(mqttWant), avail/3))
	httpMax = int(min(int64(httpWant), avail-int64(mqttMax)))
	return max(httpMax, 1), max(mqttMax, 1)
}
