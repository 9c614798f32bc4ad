package meta

import (
	"strings"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
		ok   bool
	}{
		{"2.1.0", "2.1.0", 0, true},
		{"2.10.0", "2.9.9", 1, true},
		{"1.99.99", "2.0.0", -1, true},
		{"2.1.0-rc.1", "2.1.0", -1, true},
		{"2.1.0", "2.1.0-rc.1", 1, true},
		{"2.1.0-rc.1", "2.1.0-rc.2", -1, true},
		{"2.1.0+build.7", "2.1.0", 0, true},
		{"2.1", "2.1.0", 0, false},
		{"", "1.0.0", 0, false},
	} {
		got, ok := CompareVersions(c.a, c.b)
		if got != c.want || ok != c.ok {
			t.Errorf("CompareVersions(%q, %q) = %d, %v; want %d, %v", c.a, c.b, got, ok, c.want, c.ok)
		}
	}
}

func TestParseRequirement(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Requirement
		wantErr string
	}{
		{"dcm>=2.1.0", Requirement{"dcm", "2.1.0"}, ""},
		{" head-unit >= 3.0.0-rc.1 ", Requirement{"head-unit", "3.0.0-rc.1"}, ""},
		{"dcm=2.1.0", Requirement{}, "want TYPE>=VERSION"},
		{"DCM>=2.1.0", Requirement{}, "not an ECU type"},
		{"dcm>=2.1", Requirement{}, "not a semantic version"},
	} {
		got, err := ParseRequirement(c.in)
		switch {
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("ParseRequirement(%q) error %v, want one saying %q", c.in, err, c.wantErr)
		case c.wantErr == "" && (err != nil || got != c.want):
			t.Errorf("ParseRequirement(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestUnmet(t *testing.T) {
	reqs := []Requirement{{"dcm", "2.1.0"}}
	for _, c := range []struct {
		name string
		run  Running
		met  bool
		why  string
	}{
		{"newer", Running{"dcm": {"2.2.0"}}, true, ""},
		{"equal", Running{"dcm": {"2.1.0"}}, true, ""},
		{"older", Running{"dcm": {"2.0.9"}}, false, "the dcm would run 2.0.9"},
		{"one of two older", Running{"dcm": {"3.0.0", "1.0.0"}}, false, "would run 1.0.0"},
		{"unknown version", Running{"dcm": {""}}, false, "has not reported"},
		{"no such ECU", Running{"head-unit": {"9.0.0"}}, false, "has no dcm"},
	} {
		r, why, ok := Unmet(reqs, c.run)
		if ok != c.met || !strings.Contains(why, c.why) || (!ok && r != reqs[0]) {
			t.Errorf("%s: Unmet = %+v, %q, %v; want met %v saying %q", c.name, r, why, ok, c.met, c.why)
		}
	}
}
