package gobuild

import (
	"runtime"
	"testing"
)

func TestGoarch(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{nil, runtime.GOARCH},
		{[]string{"GOOS=linux"}, runtime.GOARCH},
		{[]string{"GOOS=linux", "GOARCH=arm64"}, "arm64"},
		{[]string{"GOARCH=arm64", "GOARCH=amd64"}, "amd64"}, // the last wins, as in the environment
	} {
		if got := (Build{Env: tc.env}).goarch(); got != tc.want {
			t.Errorf("env %v: goarch %s, want %s", tc.env, got, tc.want)
		}
	}
}
