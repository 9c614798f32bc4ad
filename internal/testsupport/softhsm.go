package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSM makes a fresh SoftHSM2 token "roadsign" in a temporary token
// directory and returns the URI query that reaches it (module and PIN
// file). It skips when SoftHSM2 is missing, unless ROADSIGN_REQUIRE_HSM
// is set (make test sets it and installs Debian's softhsm2).
func SoftHSM(t *testing.T) string {
	t.Helper()
	module := "/usr/lib/softhsm/libsofthsm2.so"
	util, err := exec.LookPath("softhsm2-util")
	if _, serr := os.Stat(module); err != nil || serr != nil {
		if os.Getenv("ROADSIGN_REQUIRE_HSM") != "" {
			t.Fatalf("SoftHSM2 is required (apt-get install softhsm2): %v %v", err, serr)
		}
		t.Skip("SoftHSM2 not installed (apt-get install softhsm2)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	if out, err := exec.Command(util, "--init-token", "--free", "--label", "roadsign", "--pin", "4711", "--so-pin", "0815").CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte("4711\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "?module-path=" + module + "&pin-source=file:" + pin
}
