// Command roadsign-demo walks through Roadsign end to end on embedded
// defaults, running the real binaries and printing every command: a server
// in a temporary directory, a signing workspace, the committed firmware
// samples signed and published, a vehicle on version 1 of each ECU, one
// update, and the vehicle's status before and after. `make demo` runs it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/roadsign/roadsign/internal/buildinfo"
	"github.com/roadsign/roadsign/internal/exitcode"
	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/vin"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/campaigns"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "roadsign-demo: %v\n", err)
		if errors.As(err, new(usageError)) {
			os.Exit(exitcode.Usage)
		}
		os.Exit(exitcode.Error)
	}
}

// usageError is a mistake in how the demo was called (exit 2).
type usageError struct{ error }

type demo struct {
	bin, tmp string
	out      io.Writer
	env      []string
	token    string // the admin token, never printed
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("roadsign-demo", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory with roadsign-server, roadsign-signer and roadsign-agent")
	samples := fs.String("samples", "firmware-samples", "firmware samples directory")
	keep := fs.Bool("keep", false, "keep the temporary directory")
	serve := fs.Bool("serve", false, "keep the server running after the demo, for the browser, until Ctrl-C")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		fmt.Fprintln(out, buildinfo.String("roadsign-demo"))
		return nil
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	for _, p := range []string{"roadsign-server", "roadsign-signer", "roadsign-agent", "roadsign-fleetsim"} {
		if _, err := os.Stat(filepath.Join(absBin, p)); err != nil {
			return usageError{fmt.Errorf("%s is not in --bin %s: build the programs (make build) or give the directory that holds them", p, *bin)}
		}
	}
	if _, err := os.Stat(filepath.Join(*samples, "samples.json")); err != nil {
		return usageError{fmt.Errorf("no firmware samples at --samples %s: give the firmware-samples directory of the source tree or the release tarball", *samples)}
	}
	tmp, err := os.MkdirTemp("", "roadsign-demo-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(tmp)
	}
	d := &demo{bin: absBin, tmp: tmp, out: out}
	start := time.Now()

	list, err := fwimage.LoadSamples(*samples)
	if err != nil {
		return err
	}
	token := fmt.Sprintf("demo-admin-%d", time.Now().UnixNano())
	d.env = append(os.Environ(), "ROADSIGN_ADMIN_TOKEN="+token)
	d.token = token
	data := filepath.Join(tmp, "server-data")
	ws := filepath.Join(tmp, "signing-workspace")
	state := filepath.Join(tmp, "vehicle")

	d.step("1. The operator creates the server's online keys and starts it on embedded defaults (SQLite + local files),\n   with --auto-assign none: vehicles get only what a dealer job or campaign assigns.")
	if err := d.cmd(ctx, "roadsign-server", "init", "--data", data); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	url := "http://" + addr
	srv, err := d.startServer(data, addr, url, "--auto-assign", "none")
	if err != nil {
		return err
	}
	defer srv.stop()

	d.step("2. The release engineer creates an offline signing workspace (2-of-3 root keys) from the server's public online keys.")
	if err := d.cmd(ctx, "roadsign-signer", "init", ws, "--online-keys", filepath.Join(data, "online-keys.json")); err != nil {
		return err
	}
	d.step("3. ...signs every bootable firmware sample with its ECU type, hardware ID, version and release counter...")
	for _, s := range list {
		if !s.Bootable {
			continue
		}
		if err := d.cmd(ctx, "roadsign-signer", "add", ws, filepath.Join(*samples, s.File), "--ecu", s.ECU,
			"--hardware-id", s.HardwareID, "--version", s.Version, "--release-counter", fmt.Sprint(s.ReleaseCounter)); err != nil {
			return err
		}
	}
	d.step("4. ...and publishes: images are uploaded, the server signs snapshot and timestamp with its online keys.")
	if err := d.cmd(ctx, "roadsign-signer", "publish", ws, "--server", url, "--token", token); err != nil {
		return err
	}
	if err := d.cmd(ctx, "roadsign-signer", "status", ws); err != nil {
		return err
	}

	hu, dcm := oldest(list, "head-unit"), oldest(list, "dcm")
	v, err := makeVIN(1)
	if err != nil {
		return err
	}
	d.step("5. The admin creates a dealer account (for its region), an owner account, and the fleet team: a release\n" +
		"   manager who proposes rollouts and an approver who must approve them (four eyes; tokens are shown once).")
	var dealer, owner, rm, approver struct {
		Token string `json:"token"`
	}
	if err := d.api(ctx, url, token, "POST", "/api/v1/accounts", map[string]any{"roles": []string{"release-manager"}, "name": "release-demo"}, &rm); err != nil {
		return err
	}
	if err := d.api(ctx, url, token, "POST", "/api/v1/accounts", map[string]any{"roles": []string{"approver"}, "name": "approver-demo"}, &approver); err != nil {
		return err
	}
	if err := d.api(ctx, url, token, "POST", "/api/v1/accounts", map[string]any{"role": "dealer", "name": "dealer-demo", "regions": []string{"NA"}}, &dealer); err != nil {
		return err
	}
	if err := d.api(ctx, url, token, "POST", "/api/v1/accounts", map[string]any{"role": "owner", "name": "owner-demo", "password": "demo-password"}, &owner); err != nil {
		return err
	}
	d.step("6. A vehicle is provisioned and registered by the dealer: its head unit and DCM run version 1 from slot A;\n   both roots (image and director) are pinned.")
	if err := d.cmd(ctx, "roadsign-agent", "init", "--state", state, "--server", url, "--vin", v,
		"--image-root", filepath.Join(ws, "image.root.json"), "--director-root", filepath.Join(ws, "director.root.json"),
		"--ecu", fmt.Sprintf("head-unit:HU000001:%s:%s", hu.HardwareID, filepath.Join(*samples, hu.File)),
		"--ecu", fmt.Sprintf("dcm:DCM000001:%s:%s", dcm.HardwareID, filepath.Join(*samples, dcm.File)),
		"--token", dealer.Token); err != nil {
		return err
	}
	d.step("The owner links the car with the one-time code it shows.")
	shown, err := d.output(ctx, "roadsign-agent", "link-code", "--state", state)
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`link code for \S+: (\S+)`).FindStringSubmatch(shown)
	if m == nil {
		return fmt.Errorf("no link code in %q", shown)
	}
	if err := d.api(ctx, url, owner.Token, "POST", "/api/v1/owners/me/vehicles", map[string]any{"vin": v, "code": m[1]}, &struct{}{}); err != nil {
		return err
	}
	d.step("Status before the update:")
	if err := d.cmd(ctx, "roadsign-agent", "status", "--state", state); err != nil {
		return err
	}
	d.step("7. The DCM runs old firmware: the dealer pushes a reflash job for it, the newest image for its hardware.")
	var job struct {
		ID string `json:"id"`
	}
	if err := d.api(ctx, url, dealer.Token, "POST", "/api/v1/jobs", map[string]any{"vin": v, "ecu": "dcm", "version": "latest", "reason": "connected services fail to authorize"}, &job); err != nil {
		return err
	}
	d.step("8. The vehicle updates: verify both repositories from their pinned roots, check the director's assignment\n   against the image repository, stream the image into the inactive slot, check length and sha256,\n   trial-boot, commit, report job progress, check in a signed manifest, then re-authorize\n   connected services.")
	if err := d.cmd(ctx, "roadsign-agent", "update", "--state", state); err != nil {
		return err
	}
	d.step("The dealer sees the job succeed (only after the new image booted and was committed):")
	var j struct {
		State  string `json:"state"`
		Target string `json:"target"`
		Events []struct {
			Kind string `json:"kind"`
		} `json:"events"`
	}
	if err := d.api(ctx, url, dealer.Token, "GET", "/api/v1/jobs/"+job.ID, nil, &j); err != nil {
		return err
	}
	var evs []string
	for _, e := range j.Events {
		evs = append(evs, e.Kind)
	}
	fmt.Fprintf(d.out, "   job %s  %-10s %s  [%s]\n", job.ID[:8], j.State, j.Target, strings.Join(evs, " "))
	if j.State != "succeeded" {
		return fmt.Errorf("job %s ended %s", job.ID, j.State)
	}
	if err := d.rehearse(ctx, url, token, team{rm.Token, approver.Token}, ws, *samples, state, v); err != nil {
		return err
	}
	d.step("Status after the update and the campaign:")
	if err := d.cmd(ctx, "roadsign-agent", "status", "--state", state); err != nil {
		return err
	}
	if *serve {
		d.step(fmt.Sprintf("Done in %s. The server keeps running for the browser: %s/dealer (log in as an admin with the token in %s), %s/status. Ctrl-C stops it.",
			time.Since(start).Round(100*time.Millisecond), url, filepath.Join(tmp, "admin-token"), url))
		if err := os.WriteFile(filepath.Join(tmp, "admin-token"), []byte(token+"\n"), 0o600); err != nil {
			return err
		}
		<-ctx.Done()
	}
	if err := srv.stop(); err != nil {
		return err
	}
	d.step(fmt.Sprintf("Done in %s; the server was stopped with SIGTERM and exited cleanly.", time.Since(start).Round(100*time.Millisecond)))
	return nil
}

// rehearse runs two staged campaigns for the newest head-unit image: one
// on a simulated fleet whose installs fail on a third of the cars halts
// in its first wave; a good one, on the fleet and the demo car, completes
// wave by wave.
func (d *demo) rehearse(ctx context.Context, url, token string, t team, ws, samples, car, vin string) error {
	const vehicles = 100
	d.step(fmt.Sprintf("9. The new head-unit release 2.0.0 goes out as a staged campaign. The fleet team first rehearses it on %d\n"+
		"   simulated cars (roadsign-fleetsim: real keys, signed check-ins, verified director metadata) on 1.0.0.", vehicles))
	sim := []string{"--server", url, "--token", token, "--vehicles", fmt.Sprint(vehicles), "--model", "Rehearsal", "--seed", "7",
		"--director-root", filepath.Join(ws, "director.root.json"), "--samples", samples, "--download"}
	if err := d.cmd(ctx, "roadsign-fleetsim", append(sim, "--register")...); err != nil {
		return err
	}
	for _, r := range []struct {
		title, fail, want string
		models            []string
	}{
		{"Waves of 10%, 50% and 100%, each gated on 95% successes. Here the simulator makes the image fail on 30% of\n" +
			"   the cars: the campaign halts in its first wave, and no car outside it gets the image.", "2.0.0=0.3", server.CampaignHalted, []string{"Rehearsal"}},
		{"The team aborts it and, with a good build, rolls out to the simulated fleet and the demo car: every wave opens\n" +
			"   in turn, the demo car installs when its wave comes, and the campaign completes.", "", server.CampaignCompleted, []string{"Rehearsal", "Roadsign demo car"}},
	} {
		d.step(r.title)
		var c campaigns.View
		if err := d.api(ctx, url, t.releaseManager, "POST", "/api/v1/campaigns", map[string]any{"name": "Head unit 2.0.0", "ecu": "head-unit", "version": "2.0.0",
			"selector": map[string]any{"models": r.models}, "waves": []int{10, 50, 100}, "minSamples": 5, "soak": "0s", "maxPerMinute": 6000}, &c); err != nil {
			return err
		}
		if err := d.startApproved(ctx, url, t, &c); err != nil {
			return err
		}
		fmt.Fprintf(d.out, "   %d vehicles selected; watch it at %s/dealer/campaigns/%s (until the demo ends; --serve keeps the server up)\n", c.Selected, url, c.ID)
		args := append(sim, "--interval", "300ms", "--duration", "2m")
		if r.fail != "" {
			args = append(args, "--fail", r.fail)
		}
		fleet, err := d.background(ctx, "roadsign-fleetsim", args...)
		if err != nil {
			return err
		}
		if len(r.models) > 1 {
			fmt.Fprintf(d.out, "   (meanwhile the demo car runs `roadsign-agent update --state $DEMO/vehicle` between polls)\n")
		}
		c, err = d.watchCampaign(ctx, url, token, c.ID, func() error {
			if len(r.models) == 1 {
				return nil
			}
			return d.quiet(ctx, "roadsign-agent", "update", "--state", car)
		})
		fleet.Process.Signal(os.Interrupt)
		werr := fleet.Wait()
		if err != nil {
			return err
		}
		if werr != nil {
			return fmt.Errorf("roadsign-fleetsim: %w", werr)
		}
		if c.State != r.want {
			return fmt.Errorf("campaign %s ended %s, want %s", c.ID, c.State, r.want)
		}
		if len(r.models) > 1 {
			if err := d.showCampaignJob(ctx, url, token, vin, c.ID); err != nil {
				return err
			}
		}
		if c.State == server.CampaignHalted {
			fmt.Fprintf(d.out, "   halted: %s\n", c.HaltReason)
			if err := d.api(ctx, url, t.releaseManager, "POST", "/api/v1/campaigns/"+c.ID+"/abort", nil, &c); err != nil {
				return err
			}
		}
	}
	return nil
}

// team is the fleet team's tokens: who proposes and who approves.
type team struct{ releaseManager, approver string }

// startApproved starts a campaign the four-eyes way: the release
// manager's start is answered 409 approval_required, the approver
// approves exactly that campaign, and the start goes through.
func (d *demo) startApproved(ctx context.Context, url string, t team, c *campaigns.View) error {
	err := d.api(ctx, url, t.releaseManager, "POST", "/api/v1/campaigns/"+c.ID+"/start", nil, c)
	if err == nil || !strings.Contains(err.Error(), "approval_required") {
		return fmt.Errorf("the release manager's start without an approval: %v, want 409 approval_required", err)
	}
	fmt.Fprintf(d.out, "  -> 409 approval_required: nobody starts a rollout alone\n")
	var a struct {
		State string `json:"state"`
		What  struct {
			Images map[string]struct{ SHA256 string } `json:"images"`
		} `json:"what"`
	}
	if err := d.api(ctx, url, t.approver, "POST", "/api/v1/campaigns/"+c.ID+"/approve", nil, &a); err != nil {
		return err
	}
	for hw, img := range a.What.Images {
		fmt.Fprintf(d.out, "   the approver approved %s for %s, image sha256 %s…\n", c.ID[:8], hw, img.SHA256[:16])
	}
	return d.api(ctx, url, t.releaseManager, "POST", "/api/v1/campaigns/"+c.ID+"/start", nil, c)
}

// showCampaignJob prints the demo car's job in a campaign.
func (d *demo) showCampaignJob(ctx context.Context, url, token, vin, campaign string) error {
	var list struct {
		Jobs []struct {
			ID, State, Target, Origin, CampaignID string
			Events                                []struct{ Kind string }
		} `json:"jobs"`
	}
	if err := getJSON(ctx, url+"/api/v1/jobs?vin="+vin, token, &list); err != nil {
		return err
	}
	for _, j := range list.Jobs {
		if j.Origin != "campaign" || j.CampaignID != campaign {
			continue
		}
		var evs []string
		for _, e := range j.Events {
			evs = append(evs, e.Kind)
		}
		fmt.Fprintf(d.out, "   the demo car's campaign job %s  %-10s %s  [%s]\n", j.ID[:8], j.State, j.Target, strings.Join(evs, " "))
		if j.State != "succeeded" {
			return fmt.Errorf("the demo car's campaign job %s ended %s", j.ID, j.State)
		}
		return nil
	}
	return fmt.Errorf("the demo car got no job from campaign %s", campaign)
}

// quiet runs a program, showing its output only when it fails.
func (d *demo) quiet(ctx context.Context, name string, args ...string) error {
	var buf bytes.Buffer
	c := exec.CommandContext(ctx, filepath.Join(d.bin, name), args...)
	c.Stdout, c.Stderr, c.Env = &buf, &buf, d.env
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, args[0], err, buf.Bytes())
	}
	return nil
}

// watchCampaign polls a campaign until it stops running, printing its
// waves whenever they change, and calls each between polls.
func (d *demo) watchCampaign(ctx context.Context, url, token, id string, each func() error) (campaigns.View, error) {
	last := ""
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var c campaigns.View
		if err := getJSON(ctx, url+"/api/v1/campaigns/"+id, token, &c); err != nil {
			return c, err
		}
		var waves []string
		for i, w := range c.Waves {
			waves = append(waves, fmt.Sprintf("wave %d (%d%%) %-7s %3d/%-3d ok %2d failed", i+1, w.Percent, w.State, w.Succeeded, w.Targeted, w.Failed+w.RolledBack+w.TimedOut))
		}
		if line := fmt.Sprintf("   %-9s %s", c.State, strings.Join(waves, " | ")); line != last {
			fmt.Fprintln(d.out, line)
			last = line
		}
		if c.State != server.CampaignRunning {
			return c, nil
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("campaign %s still running after 2 minutes", id)
		}
		if err := each(); err != nil {
			return c, err
		}
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// background starts a program like cmd, without waiting for it.
func (d *demo) background(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	fmt.Fprintf(d.out, "$ %s %s &\n", name, d.shown(args))
	c := exec.CommandContext(ctx, filepath.Join(d.bin, name), args...)
	c.Stdout, c.Stderr, c.Env = d.out, d.out, d.env
	return c, c.Start()
}

func getJSON(ctx context.Context, url, token string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// shown is a command line as printed: the temporary directory as $DEMO,
// the admin token as $ADMIN_TOKEN.
func (d *demo) shown(args []string) string {
	return strings.NewReplacer(d.tmp, "$DEMO", d.token, "$ADMIN_TOKEN").Replace(strings.Join(args, " "))
}

func (d *demo) step(s string) { fmt.Fprintf(d.out, "\n== %s\n", s) }

// api makes one REST call, printing it the way curl would be typed.
func (d *demo) api(ctx context.Context, base, token, method, path string, in, out any) error {
	var body io.Reader
	shown := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, shown = bytes.NewReader(b), " '"+string(b)+"'"
	}
	fmt.Fprintf(d.out, "$ curl -X %s $SERVER%s -H 'Authorization: Bearer …'%s\n", method, path, shown)
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	fmt.Fprintf(d.out, "  -> %s\n", resp.Status)
	return json.Unmarshal(raw, out)
}

// output runs a command like cmd and also returns what it printed.
func (d *demo) output(ctx context.Context, name string, args ...string) (string, error) {
	var buf bytes.Buffer
	out := d.out
	d.out = io.MultiWriter(out, &buf)
	err := d.cmd(ctx, name, args...)
	d.out = out
	return buf.String(), err
}

func (d *demo) cmd(ctx context.Context, name string, args ...string) error {
	fmt.Fprintf(d.out, "$ %s %s\n", name, d.shown(args))
	c := exec.CommandContext(ctx, filepath.Join(d.bin, name), args...)
	c.Stdout, c.Stderr, c.Env = d.out, d.out, d.env
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, args[0], err)
	}
	return nil
}

type serverProc struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

func (d *demo) startServer(data, addr, url string, extra ...string) (*serverProc, error) {
	logPath := filepath.Join(d.tmp, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "$ roadsign-server --listen %s --data $DEMO/server-data %s   (log: $DEMO/server.log)\n", addr, strings.Join(extra, " "))
	c := exec.Command(filepath.Join(d.bin, "roadsign-server"), append([]string{"--listen", addr, "--data", data}, extra...)...)
	c.Stdout, c.Stderr, c.Env = logf, logf, d.env
	if err := c.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	s := &serverProc{cmd: c, done: make(chan error, 1), log: logPath}
	go func() { s.done <- c.Wait(); logf.Close() }()
	for i := 0; i < 100; i++ {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s, nil
		}
		select {
		case err := <-s.done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("server exited: %v\n%s", err, b)
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.stop()
	return nil, errors.New("server did not answer /healthz within 10s")
}

func (s *serverProc) stop() error {
	if s.cmd.ProcessState != nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			return fmt.Errorf("server did not exit cleanly on SIGTERM: %w", err)
		}
		return nil
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		return errors.New("server ignored SIGTERM for 20s; killed it")
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// oldest returns the first release of the first hardware ID of an ECU type.
func oldest(list []fwimage.Sample, ecu string) fwimage.Sample {
	var c []fwimage.Sample
	for _, s := range list {
		if s.ECU == ecu && s.Bootable {
			c = append(c, s)
		}
	}
	sort.Slice(c, func(i, j int) bool {
		if c[i].HardwareID != c[j].HardwareID {
			return c[i].HardwareID > c[j].HardwareID
		}
		return c[i].ReleaseCounter < c[j].ReleaseCounter
	})
	return c[0]
}

func makeVIN(n int) (string, error) {
	base := fmt.Sprintf("JTMBFREV0N%07d", n)
	d, err := vin.CheckDigit(base)
	if err != nil {
		return "", err
	}
	return base[:8] + string(d) + base[9:], nil
}
