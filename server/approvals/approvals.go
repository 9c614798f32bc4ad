// Package approvals is the four-eyes rule: an action that reaches many
// vehicles (starting a campaign, raising its waves, jobs for more than a
// threshold of vehicles) is taken only with an approval from a second
// account holding the approver role. An approval names exactly what it
// approves (What, as JSON, and its sha256); it is good for one use of an
// action whose content has the same fingerprint, and a change of that
// content voids it.
package approvals

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Store is what approvals need of the state store.
type Store interface {
	server.Approvals
	auditlog.Appender
}

// Service keeps approvals.
type Service struct {
	store  Store
	now    func() time.Time
	notify server.Notify
}

// New returns a Service; notify (may be nil) hears approval.requested.
func New(store Store, now func() time.Time, notify server.Notify) *Service {
	return &Service{store: store, now: now, notify: notify}
}

// Request is an action that needs an approval. Proposers are the
// accounts (by name) that may not approve it besides the one asking: a
// campaign's author.
type Request struct {
	Action    string
	Subject   string
	What      any
	Proposers []string
}

// View is an approval as the API shows it.
type View struct {
	ID          string          `json:"id"`
	Action      string          `json:"action"`
	Subject     string          `json:"subject"`
	What        json.RawMessage `json:"what"`
	Fingerprint string          `json:"fingerprint"`
	State       string          `json:"state"`
	RequestedBy string          `json:"requestedBy"`
	RequestedAt time.Time       `json:"requestedAt"`
	DecidedBy   string          `json:"decidedBy,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	DecidedAt   time.Time       `json:"decidedAt,omitzero"`
}

// ViewOf shows an approval.
func ViewOf(a server.Approval) View {
	return View{ID: a.ID, Action: a.Action, Subject: a.Subject, What: json.RawMessage(a.What), Fingerprint: a.Fingerprint, State: a.State,
		RequestedBy: a.RequestedBy, RequestedAt: a.RequestedAt, DecidedBy: a.DecidedBy, Reason: a.Reason, DecidedAt: a.DecidedAt}
}

// Fingerprint is the sha256 of what's JSON: what an approval is for.
func Fingerprint(what any) (string, string, error) {
	b, err := json.Marshal(what)
	if err != nil {
		return "", "", fmt.Errorf("approval content: %w", err)
	}
	sum := sha256.Sum256(b)
	return string(b), hex.EncodeToString(sum[:]), nil
}

// Grant is an approval taken for one action: Release puts it back if the
// action then failed, so it is not spent on nothing.
type Grant struct {
	s *Service
	a server.Approval
}

// Release returns an unused grant (after the action failed).
func (g Grant) Release(ctx context.Context) {
	if g.s == nil {
		return
	}
	a := g.a
	a.State = server.ApprovalApproved
	_ = g.s.store.SetApprovalState(ctx, a, server.ApprovalUsed) // best effort: it was approved
}

// Require takes the approval for r: one approved for exactly r's content
// (its state becomes used). Without one it makes (or keeps) a pending
// request for r and answers 409 approval_required naming it; approvals
// and requests of the subject for other content are voided.
func (s *Service) Require(ctx context.Context, by server.Principal, r Request) (Grant, error) {
	what, fp, err := Fingerprint(r.What)
	if err != nil {
		return Grant{}, err
	}
	all, err := s.store.ApprovalsOf(ctx, r.Subject)
	if err != nil {
		return Grant{}, err
	}
	var pending *server.Approval
	for i := range all {
		a := all[i]
		if a.Action != r.Action {
			continue
		}
		switch {
		case a.Fingerprint == fp && a.State == server.ApprovalApproved:
			used := a
			used.State = server.ApprovalUsed
			err := s.store.SetApprovalState(ctx, used, server.ApprovalApproved)
			if errors.Is(err, server.ErrConflict) {
				continue // another request used it meanwhile
			}
			if err != nil {
				return Grant{}, err
			}
			return Grant{s: s, a: used}, nil
		case a.Fingerprint == fp && a.State == server.ApprovalPending && pending == nil:
			pending = &all[i]
		}
	}
	if err := s.voidOthers(ctx, all, r.Action, fp); err != nil {
		return Grant{}, err
	}
	if pending == nil {
		now := s.now().UTC()
		a := server.Approval{ID: uuid.NewString(), Action: r.Action, Subject: r.Subject, What: what, Fingerprint: fp,
			State: server.ApprovalPending, RequestedByID: by.ID, RequestedBy: by.Name, RequestedAt: now}
		if err := s.store.CreateApproval(ctx, a); err != nil {
			return Grant{}, err
		}
		if err := auditlog.Record(ctx, s.store, now, by, "approval.request", a.ID, fmt.Sprintf("%s %s (content sha256 %s)", r.Action, r.Subject, fp[:16])); err != nil {
			return Grant{}, err
		}
		s.notify.Emit(ctx, "approval.requested", ViewOf(a))
		pending = &a
	}
	return Grant{}, server.CodedErrorf(server.KindConflict, errcode.ApprovalRequired,
		"%s needs an approval from another account holding the approver role: approval %s is pending (POST /api/v1/approvals/%s/approve); then ask again",
		actionWords(r.Action, r.Subject), pending.ID, pending.ID)
}

func actionWords(action, subject string) string {
	switch action {
	case ActionCampaignStart:
		return "starting campaign " + subject
	case ActionCampaignWaves:
		return "changing the waves of campaign " + subject
	case ActionJobs:
		return "creating jobs for this many vehicles"
	}
	return action + " " + subject
}

// Actions that need an approval.
const (
	ActionCampaignStart = "campaign.start"
	ActionCampaignWaves = "campaign.waves"
	ActionJobs          = "jobs.create"
)

// voidOthers voids the subject's open approvals of action for content
// other than fp: what they approved is not what is asked now.
func (s *Service) voidOthers(ctx context.Context, all []server.Approval, action, fp string) error {
	for _, a := range all {
		if a.Action == action && a.Fingerprint != fp && (a.State == server.ApprovalApproved || a.State == server.ApprovalPending) {
			if err := s.void(ctx, server.System, a, "what it approved changed"); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Service) void(ctx context.Context, by server.Principal, a server.Approval, why string) error {
	from := a.State
	a.State, a.Reason, a.DecidedAt = server.ApprovalVoided, why, s.now().UTC()
	a.DecidedByID, a.DecidedBy = by.ID, by.Name
	if err := s.store.SetApprovalState(ctx, a, from); errors.Is(err, server.ErrConflict) {
		return nil // decided meanwhile
	} else if err != nil {
		return err
	}
	return auditlog.Record(ctx, s.store, a.DecidedAt, by, "approval.void", a.ID, fmt.Sprintf("%s %s: %s", a.Action, a.Subject, why))
}

// Void voids every open approval (and request) of subject: by changed
// what they were for.
func (s *Service) Void(ctx context.Context, by server.Principal, subject, why string) error {
	all, err := s.store.ApprovalsOf(ctx, subject)
	if err != nil {
		return err
	}
	for _, a := range all {
		if a.State == server.ApprovalApproved || a.State == server.ApprovalPending {
			if err := s.void(ctx, by, a, why); err != nil {
				return err
			}
		}
	}
	return nil
}

// Get returns one approval.
func (s *Service) Get(ctx context.Context, id string) (server.Approval, error) {
	if _, err := uuid.Parse(id); err != nil {
		return server.Approval{}, server.Errorf(server.KindNotFound, "no approval %q (approval IDs are UUIDs)", id)
	}
	a, err := s.store.Approval(ctx, id)
	if errors.Is(err, server.ErrNotFound) {
		return a, server.Errorf(server.KindNotFound, "no approval %s", id)
	}
	return a, err
}

// Pending is the newest pending request of subject.
func (s *Service) Pending(ctx context.Context, subject string) (server.Approval, bool, error) {
	all, err := s.store.ApprovalsOf(ctx, subject)
	if err != nil {
		return server.Approval{}, false, err
	}
	for _, a := range all {
		if a.State == server.ApprovalPending {
			return a, true, nil
		}
	}
	return server.Approval{}, false, nil
}

// Of lists the approvals of subject, newest first.
func (s *Service) Of(ctx context.Context, subject string) ([]View, error) {
	all, err := s.store.ApprovalsOf(ctx, subject)
	return views(all), err
}

func views(as []server.Approval) []View {
	out := make([]View, 0, len(as))
	for _, a := range as {
		out = append(out, ViewOf(a))
	}
	return out
}

// List lists approvals in the states (all when none), newest first.
func (s *Service) List(ctx context.Context, limit int, states ...string) ([]View, error) {
	if len(states) == 0 {
		states = []string{server.ApprovalPending, server.ApprovalApproved, server.ApprovalRefused, server.ApprovalVoided, server.ApprovalUsed}
	}
	all, err := s.store.ApprovalsIn(ctx, limit, states...)
	return views(all), err
}

// Decide approves or refuses a pending request. The approver holds the
// approver role and is neither the one who asked nor a proposer.
func (s *Service) Decide(ctx context.Context, by server.Principal, id string, approve bool, reason string, proposers ...string) (View, error) {
	a, err := s.Get(ctx, id)
	if err != nil {
		return View{}, err
	}
	if !by.Is(server.RoleApprover) {
		return View{}, server.Errorf(server.KindForbidden, "only an account holding the approver role decides approvals")
	}
	if by.ID == a.RequestedByID || containsFold(proposers, by.Name) {
		return View{}, server.CodedErrorf(server.KindForbidden, errcode.OwnApproval,
			"%s proposed %s and may not approve it: four eyes means another approver decides", by.Name, actionWords(a.Action, a.Subject))
	}
	reason = strings.TrimSpace(reason)
	if !approve && (reason == "" || len(reason) > 500) {
		return View{}, server.Errorf(server.KindInvalid, "reason: say in 1 to 500 characters why this is refused")
	}
	if a.State != server.ApprovalPending {
		return View{}, server.Errorf(server.KindConflict, "approval %s is %s; only a pending request is decided", id, a.State)
	}
	a.State, a.Reason, a.DecidedAt, a.DecidedByID, a.DecidedBy = server.ApprovalApproved, reason, s.now().UTC(), by.ID, by.Name
	action := "approval.approve"
	if !approve {
		a.State, action = server.ApprovalRefused, "approval.refuse"
	}
	if err := s.store.SetApprovalState(ctx, a, server.ApprovalPending); errors.Is(err, server.ErrConflict) {
		return View{}, server.Errorf(server.KindConflict, "approval %s was decided meanwhile; look again", id)
	} else if err != nil {
		return View{}, err
	}
	detail := fmt.Sprintf("%s %s (content sha256 %s)", a.Action, a.Subject, a.Fingerprint[:16])
	if reason != "" {
		detail += ": " + reason
	}
	if err := auditlog.Record(ctx, s.store, a.DecidedAt, by, action, a.ID, detail); err != nil {
		return View{}, err
	}
	return ViewOf(a), nil
}

func containsFold(names []string, name string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}
