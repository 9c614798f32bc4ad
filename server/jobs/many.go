package jobs

import (
	"context"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
)

// MaxVINs is the most vehicles one request makes jobs for.
const MaxVINs = 10_000

// ManyContent is what an approval of jobs for many vehicles names: the
// vehicles, the images (path and sha256 of every published image of
// each ECU and version asked for) and the reason.
type ManyContent struct {
	VINs   []string      `json:"vins"`
	Parts  []PartRequest `json:"parts"`
	Images []ManyImage   `json:"images"`
	Forced bool          `json:"forced"`
	Reason string        `json:"reason"`
}

// ManyImage is one image such an approval names.
type ManyImage struct {
	Target string `json:"target"`
	SHA256 string `json:"sha256"`
}

// CreateMany makes the same job for each of r.VINs: all are checked
// before any is stored. Over ApproveOver vehicles it needs an approval
// of exactly these vehicles and images from another account.
func (s *Service) CreateMany(ctx context.Context, by server.Principal, r CreateRequest) ([]server.Job, error) {
	vins := slices.Clone(r.VINs)
	slices.Sort(vins)
	vins = slices.Compact(vins)
	if len(vins) == 0 || len(vins) > MaxVINs {
		return nil, server.Errorf(server.KindInvalid, "vins: give 1 to %d VINs", MaxVINs)
	}
	if r.VIN != "" {
		return nil, server.Errorf(server.KindInvalid, "give vin for one vehicle or vins for many, not both")
	}
	parts := r.ECUs
	if len(parts) == 0 {
		parts = []PartRequest{{ECU: r.ECU, Version: r.Version}}
	}
	for _, p := range parts {
		if p.ECU != "dcm" && p.ECU != "head-unit" {
			return nil, server.Errorf(server.KindInvalid, "ecu %q: jobs for many vehicles name the ECU type (dcm or head-unit), not a serial", p.ECU)
		}
		if p.Version == "" || p.Version == "latest" {
			return nil, server.Errorf(server.KindInvalid, "version %q: jobs for many vehicles name an exact version, so that what is approved is what installs", p.Version)
		}
	}
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return nil, err
	}
	plans := make([]planned, 0, len(vins))
	for _, vin := range vins {
		one := r
		one.VIN, one.VINs = vin, nil
		pl, err := s.plan(ctx, by, one, targets)
		if err != nil {
			return nil, server.Errorf(server.ErrorOf(err).Kind, "%s: %s (no job was made)", vin, server.ErrorOf(err).Message)
		}
		plans = append(plans, pl)
	}
	if len(vins) > s.cfg.ApproveOver {
		if s.cfg.Approvals == nil {
			return nil, server.Errorf(server.KindForbidden, "jobs for more than %d vehicles need an approval, and this server keeps none", s.cfg.ApproveOver)
		}
		what := ManyContent{VINs: vins, Parts: parts, Images: manyImages(targets, parts), Forced: r.Forced, Reason: strings.TrimSpace(r.Reason)}
		_, fp, err := approvals.Fingerprint(what)
		if err != nil {
			return nil, err
		}
		grant, err := s.cfg.Approvals.Require(ctx, by, approvals.Request{Action: approvals.ActionJobs, Subject: "jobs:" + fp, What: what})
		if err != nil {
			return nil, err
		}
		out, err := s.storeAll(ctx, by, plans)
		if len(out) == 0 && err != nil {
			grant.Release(ctx)
		}
		return out, err
	}
	return s.storeAll(ctx, by, plans)
}

func (s *Service) storeAll(ctx context.Context, by server.Principal, plans []planned) ([]server.Job, error) {
	out := make([]server.Job, 0, len(plans))
	for _, pl := range plans {
		j, err := s.store1(ctx, by, pl)
		if err != nil {
			return out, err
		}
		out = append(out, j)
	}
	return out, nil
}

// manyImages lists every published image of the parts' ECU types and
// versions, in path order.
func manyImages(targets map[string]*metadata.TargetFiles, parts []PartRequest) []ManyImage {
	var out []ManyImage
	for path, tf := range targets {
		c, err := meta.TargetCustom(tf)
		if err != nil {
			continue
		}
		for _, p := range parts {
			if c.ECU == p.ECU && c.Version == p.Version {
				out = append(out, ManyImage{Target: path, SHA256: tf.Hashes["sha256"].String()})
			}
		}
	}
	slices.SortFunc(out, func(a, b ManyImage) int { return strings.Compare(a.Target, b.Target) })
	return out
}
