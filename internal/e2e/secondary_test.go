package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client/ecunet"
	"github.com/roadsign/roadsign/client/fleetsim"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
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

	cmd, addr, stderr := startSecondary(t, dir)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
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

// startSecondary runs roadsign-agent secondary on dir as a real process
// on a free loopback port and returns it and its address.
func startSecondary(t *testing.T, dir string) (*exec.Cmd, string, *strings.Builder) {
	t.Helper()
	return startSecondaryCmd(t, exec.Command(agentBin, "secondary", "--state", dir, "--listen", "127.0.0.1:0"))
}

// startSecondaryCmd starts cmd, a secondary listening on a free port, and
// returns it, the address it says it listens on, and its log.
func startSecondaryCmd(t *testing.T, cmd *exec.Cmd) (*exec.Cmd, string, *strings.Builder) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("secondary said nothing: %v\n%s", err, stderr.String())
	}
	return cmd, strings.TrimSpace(line[strings.LastIndex(line, " "):]), stderr
}

// TestPrimaryAndSecondary: a head unit primary and a DCM secondary, each
// its own process with its own key, registered per ECU. The vehicle's
// check-ins carry each ECU's own signed report; an update set installs on
// both, and goes back on both when the DCM's image fails its boot check;
// a malicious primary that sends the DCM an image of its choosing is
// refused, and the DCM's next signed report brings that refusal to the
// server and its diagnosis. The test runs with full and partial
// verification on the DCM.
func TestPrimaryAndSecondary(t *testing.T) {
	for _, mode := range []string{"full", "partial"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, "--auto-assign", "none")
			w.signerInit()
			w.add(findSample(t, huHW, "1.1.0"))
			w.add(findSample(t, dcmHW, "1.1.0"))
			var bootfail sample
			for _, s := range loadSamples(t) {
				if !s.Bootable && s.HardwareID == dcmHW {
					bootfail = s
					w.add(s)
				}
			}
			w.publish()
			vin := testVIN(1)
			dcmDir := filepath.Join(t.TempDir(), "dcm")
			args := []string{"init-secondary", "--state", dcmDir, "--vin", vin,
				"--ecu", "dcm:DCM000001:" + dcmHW + ":" + filepath.Join(samplesDir(), findSample(t, dcmHW, "1.0.0").File),
				"--director-root", filepath.Join(w.ws, "director.root.json"), "--verification", mode}
			if mode == "full" {
				args = append(args, "--image-root", filepath.Join(w.ws, "image.root.json"))
			}
			if r := agent(t, args...); r.code != 0 {
				t.Fatalf("init-secondary: %s", r)
			}
			_, addr, dcmLog := startSecondary(t, dcmDir)
			hu := filepath.Join(t.TempDir(), "hu")
			r := agent(t, "init", "--state", hu, "--server", w.url, "--vin", vin,
				"--image-root", filepath.Join(w.ws, "image.root.json"), "--director-root", filepath.Join(w.ws, "director.root.json"),
				"--ecu", "head-unit:HU000001:"+huHW+":"+filepath.Join(samplesDir(), findSample(t, huHW, "1.0.0").File),
				"--secondary", "DCM000001="+addr, "--token", adminToken)
			if r.code != 0 {
				t.Fatalf("init the primary: %s\n%s", r, dcmLog)
			}
			v := vehicleState{dir: hu, vin: vin}
			if st := status(t, v); st["dcm"].Version != "1.0.0" || st["head-unit"].Version != "1.0.0" {
				t.Fatalf("status of the primary lists: %+v", st)
			}
			var reg struct {
				Vehicle struct {
					ECUs []struct {
						Serial, InstalledVersion, InstalledSha256, Attack string
						PublicKey                                         []byte
					} `json:"ecus"`
				} `json:"vehicle"`
			}
			if code := w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &reg); code != 200 || len(reg.Vehicle.ECUs) != 2 ||
				len(reg.Vehicle.ECUs[0].PublicKey) != 32 || len(reg.Vehicle.ECUs[1].PublicKey) != 32 || reg.Vehicle.ECUs[1].InstalledSha256 == "" {
				t.Fatalf("the server's record of the vehicle after its first check-in: %d %+v", code, reg)
			}

			set := func(dcm string) jobView {
				return w.job(adminToken, map[string]any{"vin": vin, "reason": "connected services fail",
					"ecus": []map[string]string{{"ecu": "head-unit", "version": "1.1.0"}, {"ecu": "dcm", "version": dcm}}})
			}
			good := set("1.1.0")
			update(t, hu, 0)
			if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
				t.Fatalf("after the set: %v\n%s", got, dcmLog)
			}
			if j := w.getJob(adminToken, good.ID); j.State != "succeeded" {
				t.Fatalf("the set's job is %s: %+v", j.State, j.Events)
			}

			failing := set(bootfail.Version)
			update(t, hu, 4)
			if got := versions(t, v); got["head-unit"] != "1.1.0" || got["dcm"] != "1.1.0" {
				t.Fatalf("after a set whose DCM image failed its boot check: %v, want both still on 1.1.0", got)
			}
			if j := w.getJob(adminToken, failing.ID); j.State != "rolled_back" {
				t.Fatalf("the failed set's job is %s: %+v", j.State, j.Events)
			}

			// A malicious primary: the genuine director metadata the real
			// primary holds, with targets re-signed by a key of its own that
			// assign the DCM an image of its choosing.
			if refused := forgedOffer(t, addr, hu, vin); refused == "" {
				t.Fatal("the DCM did not refuse the malicious primary's offer")
			}
			update(t, hu, 0) // the next cycle's check-in carries the DCM's signed report
			if code := w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &reg); code != 200 || reg.Vehicle.ECUs[1].Attack == "" {
				t.Fatalf("the server did not record the DCM's refusal: %+v", reg)
			}
			if d := w.diagnose(t, vin); !strings.Contains(strings.Join(d.problems(), ","), "ecu_refused_image") {
				t.Fatalf("the diagnosis does not show the DCM's refusal: %+v", d)
			}
			if mode == "full" {
				replaceSecondaryDCM(t, w, vin, hu)
			}
		})
	}
}

// replaceSecondaryDCM fits a new DCM secondary in the car of primary
// hu: until a dealer re-provisions it, check-ins are refused (a unit not
// in the inventory) and the diagnosis names it; after, they are accepted
// with the new unit's own key, and the vehicle key never changed.
func replaceSecondaryDCM(t *testing.T, w *world, vin, hu string) {
	t.Helper()
	type ecuView struct {
		Serial        string
		PublicKey     []byte
		ReportCounter int64
	}
	var before struct {
		Vehicle struct {
			PublicKey []byte
			ECUs      []ecuView `json:"ecus"`
		} `json:"vehicle"`
	}
	w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &before)
	dir := filepath.Join(t.TempDir(), "dcm2")
	if r := agent(t, "init-secondary", "--state", dir, "--vin", vin,
		"--ecu", "dcm:DCM000002:"+dcmHW+":"+filepath.Join(samplesDir(), findSample(t, dcmHW, "1.0.0").File),
		"--director-root", filepath.Join(w.ws, "director.root.json"), "--image-root", filepath.Join(w.ws, "image.root.json"), "--verification", "full"); r.code != 0 {
		t.Fatalf("init-secondary: %s", r)
	}
	_, addr, _ := startSecondary(t, dir)
	r := agent(t, "replace-ecu", "--state", hu, "--serial", "DCM000001", "--secondary", "DCM000002="+addr)
	if r.code != 0 || !strings.Contains(r.stdout, "the vehicle key is unchanged") {
		t.Fatalf("replace-ecu: %s", r)
	}
	pub := strings.TrimSpace(r.stdout[strings.Index(r.stdout, "publicKey ")+len("publicKey "):])
	update(t, hu, 0)
	d := w.diagnose(t, vin)
	if len(d.Findings) == 0 || d.Findings[0].Code != "ecu_report_refused" || !strings.Contains(d.Findings[0].Title, "ecu_unknown") {
		t.Fatalf("before the re-provisioning, the diagnosis should name the unknown unit first: %+v", d)
	}
	if code := w.api("POST", "/api/v1/vehicles/"+vin+"/ecus/DCM000001/replace", w.account("dealer", "dealer-workshop"),
		map[string]string{"serial": "DCM000002", "hardwareId": dcmHW, "publicKey": pub, "reason": "DCM replaced"}, nil); code != 200 {
		t.Fatalf("re-provision: %d", code)
	}
	update(t, hu, 0)
	var after struct {
		Vehicle struct {
			PublicKey []byte
			ECUs      []ecuView `json:"ecus"`
		} `json:"vehicle"`
	}
	w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &after)
	dcm := after.Vehicle.ECUs[1]
	if string(after.Vehicle.PublicKey) != string(before.Vehicle.PublicKey) || dcm.Serial != "DCM000002" || dcm.ReportCounter == 0 ||
		string(dcm.PublicKey) == string(before.Vehicle.ECUs[1].PublicKey) {
		t.Fatalf("after re-provisioning the DCM: vehicle key kept %v, DCM %+v", string(after.Vehicle.PublicKey) == string(before.Vehicle.PublicKey), dcm)
	}
}

// forgedOffer plays a malicious primary against the secondary at addr:
// the director metadata cached in the real primary's state dir, with
// its targets replaced by ones signed with the attacker's own key that
// assign DCM000001 an image of the attacker's. It returns the refusal.
func forgedOffer(t *testing.T, addr, primaryDir, vin string) string {
	t.Helper()
	dir := filepath.Join(primaryDir, "tuf", "director")
	read := func(role string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, role+".json"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	snap, err := metadata.Snapshot().FromBytes(read("snapshot"))
	if err != nil {
		t.Fatal(err)
	}
	tv := snap.Signed.Meta["targets.json"].Version
	k, err := keys.Generate(filepath.Join(t.TempDir(), "attacker.key"))
	if err != nil {
		t.Fatal(err)
	}
	evil := []byte("not the director's image")
	sum := sha256.Sum256(evil)
	forged := metadata.Targets(time.Now().Add(time.Hour).UTC().Truncate(time.Second))
	forged.Signed.Version = tv
	forged.Signed.UnrecognizedFields = map[string]any{"custom": map[string]any{"vin": vin}}
	custom := json.RawMessage(`{"ecuIdentifiers": {"DCM000001": {"hardwareId": "` + dcmHW + `"}}, "ecuType": "dcm", "version": "9.9.9", "releaseCounter": 99}`)
	forged.Signed.Targets = map[string]*metadata.TargetFiles{"dcm/evil.img": {Length: int64(len(evil)), Hashes: metadata.Hashes{"sha256": sum[:]}, Custom: &custom, Path: "dcm/evil.img"}}
	if err := meta.Sign(forged, k); err != nil {
		t.Fatal(err)
	}
	raw, err := forged.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"timestamp.json": read("timestamp"), fmt.Sprintf("%d.snapshot.json", snap.Signed.Version): read("snapshot"),
		"snapshot.json": read("snapshot"), fmt.Sprintf("%d.targets.json", tv): raw, "targets.json": raw}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := ecunet.NewConn(nc, 10*time.Second)
	defer c.Close()
	if err := c.Send(ecunet.Offer{Envelope: ecunet.Envelope{Type: ecunet.TypeOffer, Protocol: ecunet.Version}, Director: files}); err != nil {
		t.Fatal(err)
	}
	var v ecunet.Verdict
	if err := c.Recv(ecunet.TypeVerdict, &v); err != nil {
		t.Fatal(err)
	}
	if v.Accept {
		t.Fatalf("the DCM accepted forged metadata: %+v", v)
	}
	return v.Refused
}

// TestFleetWithSecondaries: the fleet simulator's vehicles with
// secondaries register every ECU's key and check in with every ECU's
// own signed report, cycle after cycle, against the real server.
func TestFleetWithSecondaries(t *testing.T) {
	w := newWorld(t, "--auto-assign", "none")
	w.setup(func(s sample) bool { return s.Version == "1.0.0" })
	root, err := os.ReadFile(filepath.Join(w.ws, "director.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleetsim.New(fleetsim.Config{Server: w.url, Token: adminToken, Vehicles: 20, Concurrency: 8, Seed: 7, Secondaries: true,
		ECUs: factorySpecs(t), Model: "Roadster", Year: 2025, Region: "EU", StateDir: t.TempDir(), DirectorRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Register(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.Cycle(context.Background())
	}
	if s := f.Summary(); s.Errors > 0 || s.CheckIns != 60 {
		t.Fatalf("three cycles of 20 vehicles with secondaries: %s", s)
	}
	var reg struct {
		Vehicle struct {
			ECUs []struct {
				Serial        string
				PublicKey     []byte
				ReportCounter int64
			} `json:"ecus"`
		} `json:"vehicle"`
	}
	vin := f.Vehicles()[0].VIN
	if code := w.api("GET", "/api/v1/vehicles/"+vin, adminToken, nil, &reg); code != 200 || len(reg.Vehicle.ECUs) != 2 {
		t.Fatalf("vehicle %s: %d %+v", vin, code, reg)
	}
	for _, e := range reg.Vehicle.ECUs {
		if len(e.PublicKey) != 32 || e.ReportCounter == 0 {
			t.Fatalf("ECU %s has no key of its own or no accepted signed report: %+v", e.Serial, e)
		}
	}
}
