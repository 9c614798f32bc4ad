package tufcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/meta"
)

// vectorsOptions drive the Uptane vectors of the public tuf-test-vectors
// suite (docs/conformance.md).
type vectorsOptions struct {
	server, serial, hardwareID, work string
	only                             []string
}

// stepMeta is what the suite expects of one step.
type stepMeta map[string]struct {
	Update struct {
		IsSuccess bool   `json:"is_success"`
		Err       string `json:"err"`
	} `json:"update"`
	Targets map[string]struct {
		IsSuccess bool   `json:"is_success"`
		Err       string `json:"err"`
	} `json:"targets"`
}

// expected is whether the step should pass, and else the suite's error.
func (m stepMeta) expected() (bool, string) {
	for _, repo := range []string{"director", "image_repo"} {
		r := m[repo]
		if !r.Update.IsSuccess {
			return false, repo + " " + r.Update.Err
		}
		for name, t := range r.Targets {
			if !t.IsSuccess {
				return false, repo + " target " + name + " " + t.Err
			}
		}
	}
	return true, ""
}

// vectorTally counts steps whose outcome the agent's verification met.
type vectorTally struct {
	steps, met, expectSuccess, successMet int
}

// uptaneVectors runs every Uptane vector the suite's server lists (or
// those in o.only) step by step through the agent's verification: the
// director's root and targets (tufclient.DirectorTargets, as a partial-
// verification ECU and a director without timestamp and snapshot need),
// the image repository through the agent's TUF client, the Uptane checks
// the primary makes (the director names only this ECU, with its hardware
// ID; the image repository has the same target, length and hashes), and
// each assigned image downloaded and checked against every signed hash.
// It prints one line per step and a summary, and fails when a step's
// outcome is not the one the suite expects.
func uptaneVectors(ctx context.Context, o vectorsOptions, env Env, log *slog.Logger) error {
	base := strings.TrimRight(o.server, "/")
	var names []string
	if err := getJSON(ctx, base+"/", &names); err != nil {
		return fmt.Errorf("list the vectors: %w", err)
	}
	if len(o.only) > 0 {
		names = slices.DeleteFunc(names, func(n string) bool { return !slices.Contains(o.only, n) })
	}
	var tally vectorTally
	for _, name := range names {
		if err := runVector(ctx, base, name, o, env, log, &tally); err != nil {
			return fmt.Errorf("vector %s: %w", name, err)
		}
	}
	fmt.Fprintf(env.Stdout, "Uptane vectors: %d vectors, %d steps, %d met, %d not met; of the %d steps expected to succeed, %d did\n",
		len(names), tally.steps, tally.met, tally.steps-tally.met, tally.expectSuccess, tally.successMet)
	if tally.met != tally.steps {
		return fmt.Errorf("%d of %d steps did not end as the suite expects", tally.steps-tally.met, tally.steps)
	}
	return nil
}

// runVector resets one vector and runs its steps, with fresh metadata
// caches kept across its steps (rollback across steps is part of it).
func runVector(ctx context.Context, base, name string, o vectorsOptions, env Env, log *slog.Logger, tally *vectorTally) error {
	work := filepath.Join(o.work, url.PathEscape(name))
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if _, err := post(ctx, base+"/"+url.PathEscape(name)+"/reset"); err != nil {
		return err
	}
	pinned := false
	for step := 1; ; step++ {
		body, err := post(ctx, base+"/"+url.PathEscape(name)+"/step")
		if err != nil {
			return err
		}
		if body == nil {
			return nil // 204: the vector is done
		}
		var m stepMeta
		if err := json.Unmarshal(body, &m); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		repo := base + "/" + url.PathEscape(name)
		if !pinned {
			// The suite's first root of each repository is the one a
			// vehicle is provisioned with.
			err = pinFirstRoots(ctx, repo, work)
			pinned = err == nil
		}
		if err == nil {
			err = vectorCycle(ctx, repo, work, o, env, log)
		}
		want, wantErr := m.expected()
		ok := (err == nil) == want
		tally.steps++
		if want {
			tally.expectSuccess++
		}
		if ok {
			tally.met++
			if want {
				tally.successMet++
			}
		}
		verdict := map[bool]string{true: "met", false: "NOT MET"}[ok]
		expect := "success"
		if !want {
			expect = "failure (" + wantErr + ")"
		}
		got := "success"
		if err != nil {
			got = "refused: " + err.Error()
		}
		fmt.Fprintf(env.Stdout, "%s step %d: expected %s; %s; %s\n", name, step, expect, got, verdict)
	}
}

func pinFirstRoots(ctx context.Context, repo, work string) error {
	for _, r := range []string{"director", "image_repo"} {
		b, err := get(ctx, repo+"/"+r+"/1.root.json")
		if err != nil {
			return fmt.Errorf("%s root v1: %w", r, err)
		}
		if err := tufclient.Pin(filepath.Join(work, r), b); err != nil {
			return fmt.Errorf("%w: %s root v1: %v", client.ErrRefused, r, err)
		}
	}
	return nil
}

// vectorCycle is one update cycle of the ECU against the step's
// repositories.
func vectorCycle(ctx context.Context, repo, work string, o vectorsOptions, env Env, log *slog.Logger) error {
	now, err := env.Now()
	if err != nil {
		return err
	}
	directed, err := tufclient.DirectorTargets(filepath.Join(work, "director"), func(name string) ([]byte, error) {
		return get(ctx, repo+"/director/"+name)
	}, now)
	if err != nil {
		return err
	}
	images := &tufclient.Repo{Name: "image", Dir: filepath.Join(work, "image_repo"), MetadataURL: repo + "/image_repo",
		Client: download.NewHTTPClient(), Log: log, Now: func() time.Time { return now }}
	trusted, err := images.Refresh(ctx)
	if err != nil {
		return err
	}
	refused := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{client.ErrRefused}, args...)...)
	}
	var assigned []string
	for p, dtf := range directed.Signed.Targets {
		var dc struct {
			ECUIdentifiers map[string]struct {
				HardwareID string `json:"hardwareId"`
			} `json:"ecuIdentifiers"`
		}
		if dtf.Custom == nil || json.Unmarshal(*dtf.Custom, &dc) != nil || len(dc.ECUIdentifiers) == 0 {
			return refused("director target %s names no ECU", p)
		}
		for serial, id := range dc.ECUIdentifiers {
			switch {
			case serial != o.serial:
				return refused("director target %s names ECU serial %s, which this vehicle does not have", p, serial)
			case id.HardwareID != o.hardwareID:
				return refused("director target %s is for hardware %s, ECU %s is %s", p, id.HardwareID, serial, o.hardwareID)
			}
		}
		itf, err := trusted.TargetInfo(p)
		if err != nil {
			return refused("target %s is not in the image repository (%v)", p, err)
		}
		if itf.Length != dtf.Length || !meta.HashesEqual(itf.Hashes, dtf.Hashes) {
			return refused("target %s: length or hashes differ between director and image repository", p)
		}
		var ic struct {
			HardwareIDs []string `json:"hardwareIds"`
		}
		if itf.Custom != nil {
			json.Unmarshal(*itf.Custom, &ic)
		}
		if !slices.Contains(ic.HardwareIDs, o.hardwareID) {
			return refused("target %s is built for %v, not hardware %s", p, ic.HardwareIDs, o.hardwareID)
		}
		assigned = append(assigned, p)
	}
	slices.Sort(assigned)
	for _, p := range assigned {
		tf, _ := trusted.TargetInfo(p)
		if err := fetchVectorTarget(ctx, repo+"/image_repo/targets/"+p, tf); err != nil {
			return fmt.Errorf("target %s: %w", p, err)
		}
	}
	return nil
}

// fetchVectorTarget streams a target through every signed hash, never
// past the signed length.
func fetchVectorTarget(ctx context.Context, u string, tf *metadata.TargetFiles) error {
	h, err := newTargetHash(tf)
	if err != nil {
		return err
	}
	p := download.DefaultPolicy()
	p.MaxAttempts = 1
	res, err := download.Fetch(ctx, download.NewHTTPClient(), download.Target{URL: u, Length: tf.Length, W: h}, p)
	if err != nil {
		return fmt.Errorf("%w: %v", client.ErrRefused, err)
	}
	if !res.Done {
		return fmt.Errorf("%w: the served file is shorter than the signed %d bytes", client.ErrRefused, tf.Length)
	}
	if err := h.check(); err != nil {
		return fmt.Errorf("%w: %v", client.ErrRefused, err)
	}
	return nil
}

// get fetches a metadata file: a 404 is tufclient.ErrMissing.
func get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := download.NewHTTPClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, tufclient.ErrMissing
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 8<<20))
}

func getJSON(ctx context.Context, u string, v any) error {
	b, err := get(ctx, u)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// post posts to the suite's server; nil for 204 No Content.
func post(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(nil))
	if err != nil {
		return nil, err
	}
	resp, err := download.NewHTTPClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case err != nil:
		return nil, err
	case resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	if len(b) == 0 {
		return nil, errors.New("POST " + u + ": empty answer")
	}
	return b, nil
}
