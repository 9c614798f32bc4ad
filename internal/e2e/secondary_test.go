package e2e

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roadsign/roadsign/client/ecunet"
)

// TestSecondaryProcess: roadsign-agent init-secondary creates a DCM's own
// state and key (its flags checked like every command's), and
// roadsign-agent secondary serves it as a real process on loopback: it
// says who it is over the in-vehicle protocol and stops cleanly on
// SIGTERM.
func TestSecondaryProcess(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	dcm := findSample(t, dcmHW, "1.0.0")
	dir := filepath.Join(t.TempDir(), "dcm")
	ecu := "dcm:DCM000001:" + dcmHW + ":" + filepath.Join(samplesDir(), dcm.File)
	for _, bad := range [][]string{
		{"--vin", testVIN(1), "--ecu", ecu},
		{"--vin", testVIN(1), "--ecu", "dcm:DCM000001", "--director-root", filepath.Join(w.ws, "director.root.json")},
		{"--vin", testVIN(1), "--ecu", ecu, "--director-root", filepath.Join(w.ws, "director.root.json"), "--verification", "some"},
		{"--vin", testVIN(1), "--ecu", ecu, "--director-root", filepath.Join(w.ws, "director.root.json"), "--verification", "full"},
	} {
		if r := agent(t, append([]string{"init-secondary", "--state", dir}, bad...)...); r.code != 2 {
			t.Fatalf("init-secondary %v: %s, want exit 2", bad, r)
		}
	}
	r := agent(t, "init-secondary", "--state", dir, "--vin", testVIN(1), "--ecu", ecu,
		"--director-root", filepath.Join(w.ws, "director.root.json"), "--verification", "partial")
	if r.code != 0 {
		t.Fatalf("init-secondary: %s", r)
	}
	if st, err := os.Stat(filepath.Join(dir, "ecu.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the ECU's own key: %v %v", st, err)
	}

	cmd := exec.Command(agentBin, "secondary", "--state", dir, "--listen", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("secondary said nothing: %v\n%s", err, stderr.String())
	}
	addr := strings.TrimSpace(line[strings.LastIndex(line, " "):])
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s (from %q): %v", addr, line, err)
	}
	c := ecunet.NewConn(nc, 5*time.Second)
	if err := c.Send(ecunet.Envelope{Type: ecunet.TypeHello, Protocol: ecunet.Version}); err != nil {
		t.Fatal(err)
	}
	var h ecunet.Hello
	if err := c.Recv(ecunet.TypeHello, &h); err != nil {
		t.Fatal(err)
	}
	if h.Serial != "DCM000001" || h.VIN != testVIN(1) || h.Verification != "partial" || len(h.PublicKey) != 32 || h.DirectorRoot != 1 {
		t.Fatalf("hello: %+v", h)
	}
	c.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("secondary on SIGTERM: %v\n%s", err, stderr.String())
	}
}
