package envflag

import (
	"flag"
	"io"
	"testing"
)

func TestApply(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"default", nil, nil, "def", false},
		{"from env", nil, map[string]string{"ROADSIGN_DATA_DIR": "env"}, "env", false},
		{"flag wins", []string{"--data-dir", "flag"}, map[string]string{"ROADSIGN_DATA_DIR": "env"}, "flag", false},
		{"bad env value", nil, map[string]string{"ROADSIGN_COUNT": "many"}, "def", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			d := fs.String("data-dir", "def", "")
			fs.Int("count", 1, "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := Apply(fs, func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if *d != tt.want {
				t.Fatalf("data-dir = %q, want %q", *d, tt.want)
			}
		})
	}
}
