package campaigns

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Content is what an approval of a campaign names: the campaign, its
// images (path and sha256 by hardware ID), waves and selector. Any change
// to it voids the approval.
type Content struct {
	Campaign   string           `json:"campaign"`
	Name       string           `json:"name"`
	ECU        string           `json:"ecu"`
	Version    string           `json:"version"`
	Images     map[string]Image `json:"images"`
	With       []ContentPart    `json:"with,omitempty"`
	Waves      []int            `json:"waves"`
	Selector   server.Selector  `json:"selector"`
	IncludeNew bool             `json:"includeNew"`
}

// ContentPart is one more ECU of an update set's content.
type ContentPart struct {
	ECU     string           `json:"ecu"`
	Version string           `json:"version"`
	Images  map[string]Image `json:"images"`
}

// Image is one image an approval names.
type Image struct {
	Target string `json:"target"`
	SHA256 string `json:"sha256"`
}

func images(targets map[string]*metadata.TargetFiles, paths map[string]string) (map[string]Image, error) {
	out := map[string]Image{}
	for hw, p := range paths {
		tf, ok := targets[p]
		if !ok {
			return nil, server.CodedErrorf(server.KindConflict, errcode.NoSuchImage, "image %s is no longer published; change the campaign's version", p)
		}
		out[hw] = Image{Target: p, SHA256: tf.Hashes["sha256"].String()}
	}
	return out, nil
}

// approvalContent is what an approval of campaign c with configuration
// cfg names.
func (s *Service) approvalContent(ctx context.Context, c server.Campaign, cfg server.CampaignConfig) (Content, error) {
	targets, _, err := s.images.CurrentTargets(ctx)
	if err != nil {
		return Content{}, err
	}
	imgs, err := images(targets, cfg.Targets)
	if err != nil {
		return Content{}, err
	}
	out := Content{Campaign: c.ID, Name: c.Name, ECU: cfg.ECU, Version: cfg.Version, Images: imgs, Waves: cfg.Waves, Selector: cfg.Selector, IncludeNew: cfg.IncludeNew}
	for _, w := range cfg.With {
		imgs, err := images(targets, w.Targets)
		if err != nil {
			return Content{}, err
		}
		out.With = append(out.With, ContentPart{ECU: w.ECU, Version: w.Version, Images: imgs})
	}
	return out, nil
}

// Decide approves or refuses approval request id. Neither the account
// that asked nor, for a campaign's request, the campaign's author may.
func (s *Service) Decide(ctx context.Context, by server.Principal, id string, approve bool, reason string) (approvals.View, error) {
	a, err := s.approvals.Get(ctx, id)
	if err != nil {
		return approvals.View{}, err
	}
	var authors []string
	if a.Action == approvals.ActionCampaignStart || a.Action == approvals.ActionCampaignWaves {
		c, err := s.load(ctx, a.Subject)
		if err != nil {
			return approvals.View{}, err
		}
		authors = append(authors, c.CreatedBy)
	}
	return s.approvals.Decide(ctx, by, id, approve, reason, authors...)
}

// DecidePending decides campaign id's pending request (start, or raised
// waves).
func (s *Service) DecidePending(ctx context.Context, by server.Principal, id string, approve bool, reason string) (approvals.View, error) {
	if _, err := s.load(ctx, id); err != nil {
		return approvals.View{}, err
	}
	pending, ok, err := s.approvals.Pending(ctx, id)
	if err != nil {
		return approvals.View{}, err
	}
	if !ok {
		return approvals.View{}, server.Errorf(server.KindConflict, "campaign %s has no request waiting for approval: its proposer asks by starting it (or raising its waves)", id)
	}
	return s.Decide(ctx, by, pending.ID, approve, reason)
}

// ChangeRequest is the body of PATCH /api/v1/campaigns/{id}: the fields
// to change.
type ChangeRequest struct {
	Version    *string          `json:"version"`
	Selector   *server.Selector `json:"selector"`
	Waves      []int            `json:"waves"`
	IncludeNew *bool            `json:"includeNew"`
}

// Change changes a campaign. A draft may change its image version,
// selector, waves and includeNew; a running or paused campaign only its
// waves, and only with an approval of the campaign with the new waves.
// Either way, approvals of what it was before are void.
func (s *Service) Change(ctx context.Context, by server.Principal, id string, r ChangeRequest) (View, error) {
	c, err := s.load(ctx, id)
	if err != nil {
		return View{}, err
	}
	cfg := c.Config
	if r.Waves != nil {
		cfg.Waves = r.Waves
		if err := checkWaves(cfg.Waves); err != nil {
			return View{}, err
		}
	}
	switch c.State {
	case server.CampaignDraft:
		return s.changeDraft(ctx, by, c, cfg, r)
	case server.CampaignRunning, server.CampaignPaused:
		if r.Version != nil || r.Selector != nil || r.IncludeNew != nil {
			return View{}, invalid("campaign %s is %s: only its waves change now (abort it and make a new one for another image or selector)", id, c.State)
		}
		if r.Waves == nil {
			return View{}, invalid("give waves to change")
		}
		if len(cfg.Waves) < c.OpenWaves || !slices.Equal(cfg.Waves[:c.OpenWaves], c.Config.Waves[:c.OpenWaves]) {
			return View{}, invalid("waves %v: the %d waves already open (%v) stay as they are; change the waves after them", cfg.Waves, c.OpenWaves, c.Config.Waves[:c.OpenWaves])
		}
		what, err := s.approvalContent(ctx, c, cfg)
		if err != nil {
			return View{}, err
		}
		grant, err := s.approvals.Require(ctx, by, approvals.Request{Action: approvals.ActionCampaignWaves, Subject: id, What: what, Proposers: []string{c.CreatedBy}})
		if err != nil {
			return View{}, err
		}
		if err := s.store.SetCampaignConfig(ctx, id, []string{c.State}, cfg, s.now().UTC()); err != nil {
			grant.Release(ctx)
			if errors.Is(err, server.ErrConflict) {
				return View{}, server.Errorf(server.KindConflict, "campaign %s changed meanwhile; look again", id)
			}
			return View{}, err
		}
		if err := auditlog.Record(ctx, s.store, s.now(), by, "campaign.waves", id, fmt.Sprintf("waves %v -> %v (approved)", c.Config.Waves, cfg.Waves)); err != nil {
			return View{}, err
		}
		return s.Get(ctx, id)
	}
	return View{}, server.Errorf(server.KindConflict, "campaign %s is %s; it no longer changes", id, c.State)
}

func (s *Service) changeDraft(ctx context.Context, by server.Principal, c server.Campaign, cfg server.CampaignConfig, r ChangeRequest) (View, error) {
	if r.Selector != nil {
		if err := checkSelector(*r.Selector); err != nil {
			return View{}, err
		}
		cfg.Selector = *r.Selector
	}
	if r.IncludeNew != nil {
		cfg.IncludeNew = *r.IncludeNew
	}
	if r.Version != nil {
		cfg.Version = *r.Version
	}
	if r.Version != nil || r.Selector != nil {
		targets, _, err := s.images.CurrentTargets(ctx)
		if err != nil {
			return View{}, err
		}
		if cfg.Targets, err = resolve(targets, cfg); err != nil {
			return View{}, err
		}
	}
	now := s.now().UTC()
	if err := s.store.SetCampaignConfig(ctx, c.ID, []string{server.CampaignDraft}, cfg, now); errors.Is(err, server.ErrConflict) {
		return View{}, server.Errorf(server.KindConflict, "campaign %s changed meanwhile; look again", c.ID)
	} else if err != nil {
		return View{}, err
	}
	if err := s.approvals.Void(ctx, by, c.ID, "the campaign changed"); err != nil {
		return View{}, err
	}
	if err := auditlog.Record(ctx, s.store, now, by, "campaign.change", c.ID, fmt.Sprintf("%s %s to %s; waves %v", cfg.ECU, cfg.Version, describe(cfg.Selector), cfg.Waves)); err != nil {
		return View{}, err
	}
	return s.Get(ctx, c.ID)
}

// checkWaves checks cumulative wave percentages.
func checkWaves(waves []int) error {
	for i, w := range waves {
		if w < 1 || w > 100 || (i > 0 && w <= waves[i-1]) {
			return invalid("waves %v: want increasing percentages from 1 to 100", waves)
		}
	}
	if len(waves) == 0 || waves[len(waves)-1] != 100 {
		return invalid("waves %v: the last wave must be 100 (percent, cumulative)", waves)
	}
	return nil
}
