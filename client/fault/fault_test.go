package fault

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func ptr(n int) *int { return &n }

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Set
		wantErr bool
	}{
		{in: "", want: Set{}},
		{in: "corrupt-download", want: Set{CorruptDownload: true}},
		{in: "network-drop:50,boot-fail", want: Set{NetworkDropPct: 50, BootFail: true}},
		{in: "power-loss:switch", want: Set{PowerLoss: "switch", PowerLossPct: 50}},
		{in: "power-loss:download:30", want: Set{PowerLoss: "download", PowerLossPct: 30}},
		{in: "truncate-download, flash-error", want: Set{TruncateDownload: true, FlashError: true}},
		{in: "network-drop", wantErr: true},
		{in: "network-drop:150", wantErr: true},
		{in: "power-loss:reboot", wantErr: true},
		{in: "power-loss", wantErr: true},
		{in: "gremlins", wantErr: true},
		{in: "signal:0,can-loss", want: Set{SignalBars: ptr(0), CANLoss: true}},
		{in: "signal:5,corrupt-active", want: Set{SignalBars: ptr(5), CorruptActive: true}},
		{in: "signal", wantErr: true},
		{in: "signal:6", wantErr: true},
		{in: "signal:-1", wantErr: true},
		{in: "signal:12", wantErr: true},
		{in: "rtc=+20m", want: Set{RTCOffset: 20 * time.Minute}},
		{in: "rtc=-2h,can-loss", want: Set{RTCOffset: -2 * time.Hour, CANLoss: true}},
		{in: "rtc=1970-01-01", want: Set{RTCDate: time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{in: "rtc=20m", wantErr: true},
		{in: "rtc=", wantErr: true},
		{in: "rtc=tomorrow", wantErr: true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err = %v", tt.in, err)
			continue
		}
		got.Kill = nil
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: got %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestBodyFaults(t *testing.T) {
	content := bytes.Repeat([]byte{7}, 1000)
	read := func(s Set, off int64) ([]byte, error) {
		return io.ReadAll(s.Body(int64(len(content)))(bytes.NewReader(content[off:]), off))
	}
	got, err := read(Set{CorruptDownload: true}, 0)
	if err != nil || len(got) != 1000 || got[500] == 7 {
		t.Errorf("corrupt: %d bytes, err %v, byte 500 = %d", len(got), err, got[500])
	}
	got, err = read(Set{TruncateDownload: true}, 0)
	if err != nil || len(got) != 900 {
		t.Errorf("truncate: %d bytes, err %v", len(got), err)
	}
	got, err = read(Set{NetworkDropPct: 40}, 0)
	if !errors.Is(err, ErrNetworkDrop) || len(got) != 400 {
		t.Errorf("drop: %d bytes, err %v", len(got), err)
	}
	got, err = read(Set{NetworkDropPct: 40}, 600) // resumed past the drop point
	if err != nil || len(got) != 400 {
		t.Errorf("drop after resume: %d bytes, err %v", len(got), err)
	}
	killed := false
	s := Set{PowerLoss: "download", PowerLossPct: 30, Kill: func() { killed = true; panic("killed") }}
	func() {
		defer func() { recover() }()
		read(s, 0)
	}()
	if !killed {
		t.Error("power-loss:download did not kill")
	}
}

// TestClock: the simulated clock runs from the date it is set to, or off
// the real one by the offset.
func TestClock(t *testing.T) {
	wall := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	now := func() time.Time { return wall }
	if got := (Set{}).Clock(now)(); !got.Equal(wall) {
		t.Errorf("no fault: %s", got)
	}
	if got := (Set{RTCOffset: -30 * time.Minute}).Clock(now)(); !got.Equal(wall.Add(-30 * time.Minute)) {
		t.Errorf("offset: %s", got)
	}
	clock := (Set{RTCDate: time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)}).Clock(now)
	wall = wall.Add(time.Minute)
	if got := clock(); !got.Equal(time.Date(1970, 1, 1, 0, 1, 0, 0, time.UTC)) {
		t.Errorf("date: %s", got)
	}
}
