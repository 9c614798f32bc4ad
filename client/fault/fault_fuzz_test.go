package fault

import (
	"strings"
	"testing"
)

// FuzzParse: the --simulate parser never panics; what it accepts is in
// range, and it refuses with a message rather than ignoring what it does
// not know.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "network-drop:50,boot-fail", "power-loss:download:30", "signal:0", "corrupt-download,truncate-download",
		"flash-error", "can-loss,corrupt-active", "network-drop", "power-loss:nowhere", "signal:9", "network-drop:101", ",,", "boot-fail:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := Parse(s)
		if err != nil {
			if err.Error() == "" || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Parse(%q): error %q is not one line", s, err)
			}
			return
		}
		if set.NetworkDropPct < 0 || set.NetworkDropPct > 100 || set.PowerLossPct < 0 || set.PowerLossPct > 100 {
			t.Fatalf("Parse(%q) = %+v: percentage out of range", s, set)
		}
		if set.SignalBars != nil && (*set.SignalBars < 0 || *set.SignalBars > 5) {
			t.Fatalf("Parse(%q): %d signal bars", s, *set.SignalBars)
		}
		if set.PowerLoss != "" && !contains(Phases, set.PowerLoss) {
			t.Fatalf("Parse(%q): power loss in unknown phase %q", s, set.PowerLoss)
		}
		if strings.TrimSpace(s) != "" && !set.Any() {
			t.Fatalf("Parse(%q) accepted it but sets no fault", s)
		}
	})
}
