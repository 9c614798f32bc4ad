package httpapi

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

// TestStreamsMustKeepMoving: a download whose client stops reading, and
// an upload whose client stops sending, are cut once a progress window
// passes without enough bytes, instead of holding the connection forever.
func TestStreamsMustKeepMoving(t *testing.T) {
	defer func(w time.Duration) { progressWindow = w }(progressWindow)
	progressWindow = 300 * time.Millisecond
	ginMode.Do(func() { gin.SetMode(gin.ReleaseMode) })
	a := &api{Deps: Deps{Log: slog.New(slog.DiscardHandler), Now: time.Now}}
	ended := make(chan error, 2)
	r := gin.New()
	r.GET("/download", a.limit(Download), func(c *gin.Context) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Writer.Write(buf); err != nil {
				ended <- err
				return
			}
		}
	})
	r.PUT("/upload", a.limit(Upload), func(c *gin.Context) {
		_, err := io.Copy(io.Discard, c.Request.Body)
		ended <- err
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r}
	go srv.Serve(ln)
	defer srv.Close()

	for _, req := range []string{
		"GET /download HTTP/1.1\r\nHost: x\r\n\r\n",                                 // then never read
		"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nhello", // then never send more
	} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetReadBuffer(4096)
		}
		io.WriteString(c, req)
		select {
		case err := <-ended:
			if err == nil {
				t.Fatalf("%s: the stalled stream ended without an error", strings.Fields(req)[1])
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: a stalled stream was not cut within 5 s (window %s)", strings.Fields(req)[1], progressWindow)
		}
	}
}
