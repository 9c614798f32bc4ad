package connlimit

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// serve accepts on l, keeping every connection open until it is closed by
// the peer or by the listener, and counts what reaches it.
func serve(t *testing.T, l *Listener) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return &n
}

func listen(t *testing.T, cfg Config) (*Listener, string) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(raw, cfg)
	return l, raw.Addr().String()
}

// dialFrom connects from a local address of its own (all of 127/8 is
// loopback), so one test can be several clients.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedSoon reports whether the server closes c within d.
func closedSoon(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return !(ok && ne.Timeout())
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		from     []string // one connection per entry, from that address
		accepted int64
	}{
		{"per-address cap", Config{PerAddress: 3}, []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3"}, 4},
		{"exempt address", Config{PerAddress: 2, Exempt: ExemptList([]string{"127.0.0.2"})}, []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.3"}, 5},
		{"exempt CIDR", Config{PerAddress: 1, Exempt: ExemptList([]string{"127.0.0.0/30"})}, []string{"127.0.0.2", "127.0.0.2", "127.0.0.5", "127.0.0.5"}, 3},
		{"total cap, refusing", Config{Max: 3}, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, addr := listen(t, tt.cfg)
			n := serve(t, l)
			for _, src := range tt.from {
				dialFrom(t, src, addr)
			}
			waitFor(t, "the accepts", func() bool { return n.Load() >= tt.accepted })
			time.Sleep(50 * time.Millisecond)
			if got := n.Load(); got != tt.accepted {
				t.Fatalf("accepted %d, want %d", got, tt.accepted)
			}
		})
	}
}

// TestPerAddressSlotsComeBack: a closed connection frees its address's slot.
func TestPerAddressSlotsComeBack(t *testing.T) {
	l, addr := listen(t, Config{PerAddress: 1})
	n := serve(t, l)
	c := dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "the first accept", func() bool { return n.Load() == 1 })
	if refused := dialFrom(t, "127.0.0.2", addr); !closedSoon(refused, time.Second) {
		t.Fatal("a second connection from the same address was kept")
	}
	c.Close()
	waitFor(t, "the slot to come back", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.perIP) == 0
	})
	dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "the accept after the slot came back", func() bool { return n.Load() == 2 })
}

// TestIdleShedding: near the total cap the longest-idle connections are
// closed, busy ones are kept, and a waiting client gets in.
func TestIdleShedding(t *testing.T) {
	var shed atomic.Int64
	l, addr := listen(t, Config{Max: 10, Wait: true, OnRefuse: func(r string) {
		if r == "idle-shed" {
			shed.Add(1)
		}
	}})
	conns := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() { l.Close() })
	var client []net.Conn
	var server []net.Conn
	for i := range 10 {
		client = append(client, dialFrom(t, "127.0.0.2", addr))
		s := <-conns
		server = append(server, s)
		l.SetIdle(s, i < 5) // the first five idle, the rest busy
	}
	// An eleventh client waits for a slot; idle ones are shed for it.
	dialFrom(t, "127.0.0.3", addr)
	select {
	case <-conns:
	case <-time.After(3 * time.Second):
		t.Fatal("the waiting client was not accepted")
	}
	if shed.Load() == 0 {
		t.Fatal("no idle connection was shed")
	}
	for i := 5; i < 10; i++ {
		if closedSoon(client[i], 50*time.Millisecond) {
			t.Fatalf("busy connection %d was closed", i)
		}
	}
	if !closedSoon(client[0], time.Second) {
		t.Fatal("the longest-idle connection is still open")
	}
}

// TestFirstDeadline: a connection that says nothing is closed by its
// first-exchange deadline.
func TestFirstDeadline(t *testing.T) {
	l, addr := listen(t, Config{FirstDeadline: 200 * time.Millisecond})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { c.Read(make([]byte, 1)); c.Close() }()
		}
	}()
	t.Cleanup(func() { l.Close() })
	c := dialFrom(t, "127.0.0.2", addr)
	if !closedSoon(c, 2*time.Second) {
		t.Fatal("a silent connection outlived its first deadline")
	}
}

func TestFitOpenFiles(t *testing.T) {
	tests := []struct {
		limit              int64
		httpWant, mqttWant int
		wantHTTP, wantMQTT int
	}{
		{1 << 20, 4096, 100000, 4096, 100000}, // plenty
		{1024, 4096, 100000, 512, 256},        // the broker gets a third of 768
		{1024, 100, 100000, 100, 256},         // HTTP asks less than it may have
		{20000, 4096, 100000, 4096, 6581},     // a common default
		{1024, 4096, 0, 768, 1},               // no embedded broker
		{10, 4096, 100000, 2, 1},              // absurdly low: still one each
	}
	for _, tt := range tests {
		h, m := FitOpenFiles(tt.limit, 256, tt.httpWant, tt.mqttWant)
		if h != tt.wantHTTP || m != tt.wantMQTT {
			t.Errorf("FitOpenFiles(%d, 256, %d, %d) = %d, %d; want %d, %d", tt.limit, tt.httpWant, tt.mqttWant, h, m, tt.wantHTTP, tt.wantMQTT)
		}
	}
}
