package meta

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Requirement is a compatibility an image declares (custom.requires):
// with it installed, every ECU of type ECU must run MinVersion or newer.
// A head unit 3.x that needs DCM 2.1 says {"ecuType": "dcm",
// "minVersion": "2.1.0"}.
type Requirement struct {
	ECU        string `json:"ecuType"`
	MinVersion string `json:"minVersion"`
}

func (r Requirement) String() string { return r.ECU + ">=" + r.MinVersion }

var (
	versionRE = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$`)
	ecuTypeRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// ParseRequirement reads TYPE>=VERSION, as roadsign-signer add --requires
// takes it.
func ParseRequirement(s string) (Requirement, error) {
	typ, ver, ok := strings.Cut(s, ">=")
	r := Requirement{ECU: strings.TrimSpace(typ), MinVersion: strings.TrimSpace(ver)}
	switch {
	case !ok:
		return r, fmt.Errorf("requirement %q: want TYPE>=VERSION, e.g. dcm>=2.1.0", s)
	case !ecuTypeRE.MatchString(r.ECU):
		return r, fmt.Errorf("requirement %q: %q is not an ECU type like dcm or head-unit", s, r.ECU)
	case !versionRE.MatchString(r.MinVersion):
		return r, fmt.Errorf("requirement %q: %q is not a semantic version like 2.1.0", s, r.MinVersion)
	}
	return r, nil
}

// CompareVersions orders two semantic versions (MAJOR.MINOR.PATCH with an
// optional -prerelease, which sorts before its release; build metadata
// is ignored): -1, 0 or 1. ok is false when either is not one.
func CompareVersions(a, b string) (cmp int, ok bool) {
	ma, mb := versionRE.FindStringSubmatch(a), versionRE.FindStringSubmatch(b)
	if ma == nil || mb == nil {
		return 0, false
	}
	for i := 1; i <= 3; i++ {
		x, _ := strconv.ParseUint(ma[i], 10, 64)
		y, _ := strconv.ParseUint(mb[i], 10, 64)
		if x != y {
			if x < y {
				return -1, true
			}
			return 1, true
		}
	}
	switch pa, pb := ma[4], mb[4]; {
	case pa == pb:
		return 0, true
	case pa == "":
		return 1, true
	case pb == "":
		return -1, true
	case pa < pb:
		return -1, true
	default:
		return 1, true
	}
}

// Running is what a vehicle's ECUs run, by ECU type: one version per ECU
// of that type ("" when an ECU's version is not known).
type Running map[string][]string

// Unmet returns the first requirement of reqs the versions in run do not
// meet, and why, or ok when all are met. An ECU type the vehicle does not
// have meets nothing; neither does an ECU whose version is not known.
func Unmet(reqs []Requirement, run Running) (Requirement, string, bool) {
	for _, r := range reqs {
		vs := run[r.ECU]
		if len(vs) == 0 {
			return r, fmt.Sprintf("requires %s, and the vehicle has no %s", r, r.ECU), false
		}
		sorted := append([]string(nil), vs...)
		sort.Strings(sorted)
		for _, v := range sorted {
			if v == "" {
				return r, fmt.Sprintf("requires %s, and the vehicle has not reported which version its %s runs", r, r.ECU), false
			}
			if c, ok := CompareVersions(v, r.MinVersion); !ok || c < 0 {
				return r, fmt.Sprintf("requires %s, and the %s would run %s", r, r.ECU, v), false
			}
		}
	}
	return Requirement{}, "", true
}
