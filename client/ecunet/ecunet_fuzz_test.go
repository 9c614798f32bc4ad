package ecunet

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzFrames: whatever bytes a primary (or anything on the vehicle
// network) sends, reading frames never panics, never allocates past the
// limits, and ends with a frame, EOF or a protocol error.
func FuzzFrames(f *testing.F) {
	frame := func(kind byte, p []byte) []byte {
		h := []byte{kind, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
		return append(h, p...)
	}
	f.Add(frame(KindMessage, []byte(`{"type":"hello","protocol":1}`)))
	f.Add(append(frame(KindData, []byte("abc")), frame(KindMessage, []byte(`{"type":"end"}`))...))
	f.Add([]byte{KindMessage, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'X', 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go func() {
			a.Write(data)
			a.Close()
		}()
		c := NewConn(b, time.Second)
		defer c.Close()
		for i := 0; i < 64; i++ {
			kind, p, err := c.Next()
			if err != nil {
				if !errors.Is(err, ErrProtocol) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.ErrClosedPipe) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if kind == KindMessage && len(p) > MaxMessage || kind == KindData && len(p) > MaxChunk {
				t.Fatalf("a %q frame of %d bytes got through", kind, len(p))
			}
		}
	})
}
