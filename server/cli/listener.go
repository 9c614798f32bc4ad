package cli

import (
	"io"
	"net"
	"sync"
)

// limitListener accepts at most n connections at a time, like
// x/net/netutil's LimitListener, but its connections keep the TCP
// connection's ReadFrom: net/http sends files with sendfile(2) only when
// the connection has one.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func limitListen(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	lc := &limitConn{Conn: c, release: func() { <-l.sem }}
	if rf, ok := c.(io.ReaderFrom); ok {
		return &limitConnReaderFrom{limitConn: lc, rf: rf}, nil
	}
	return lc, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

type limitConnReaderFrom struct {
	*limitConn
	rf io.ReaderFrom
}

func (c *limitConnReaderFrom) ReadFrom(r io.Reader) (int64, error) { return c.rf.ReadFrom(r) }
