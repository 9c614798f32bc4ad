// Package owners links vehicles to owner accounts. An owner links a VIN
// with the one-time code the vehicle shows (or a dealer links it for
// them), so nobody can link a stranger's car; a vehicle still linked to a
// previous owner must be released by them or transferred by a dealer.
// Each link carries the connected-services subscription.
package owners

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/auditlog"
)

// Store is what links need of the state store.
type Store interface {
	server.Links
	Vehicle(ctx context.Context, vin string) (server.Vehicle, error)
	AccountByName(ctx context.Context, name string) (server.Account, error)
	auditlog.Appender
}

// Service manages links.
type Service struct {
	store Store
	now   func() time.Time
	cfg   Config
}

// Config is what the owners service is built from.
type Config struct {
	Store Store
	// Subscription (a year) is how long a new link's subscription runs.
	Subscription time.Duration
	// CodeTTL (15 min) is how long a link code is valid.
	CodeTTL time.Duration
	Now     func() time.Time
}

// New returns the owners service, or an error naming what cfg lacks.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Now == nil {
		return nil, errors.New("owners: store and clock are required")
	}
	if cfg.Subscription <= 0 {
		cfg.Subscription = 365 * 24 * time.Hour
	}
	if cfg.CodeTTL <= 0 {
		cfg.CodeTTL = 15 * time.Minute
	}
	return &Service{store: cfg.Store, now: cfg.Now, cfg: cfg}, nil
}

const codeAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789" // no 0/O, 1/I

// NewLinkCode makes the one-time code a vehicle displays (8 characters,
// about 40 bits, valid for CodeTTL and for one use).
func (s *Service) NewLinkCode(ctx context.Context, vin string) (string, time.Time, error) {
	b := make([]byte, 8)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(codeAlphabet))))
		if err != nil {
			return "", time.Time{}, err
		}
		b[i] = codeAlphabet[n.Int64()]
	}
	code := string(b)
	exp := s.now().Add(s.cfg.CodeTTL).UTC()
	if err := s.store.SetLinkCode(ctx, vin, accounts.HashToken(vin+":"+code), exp); err != nil {
		return "", time.Time{}, err
	}
	return code, exp, nil
}

// LinkRequest is the body of POST /api/v1/owners/me/vehicles.
type LinkRequest struct {
	VIN  string `json:"vin"`
	Code string `json:"code"`
}

// LinkWithCode links vin to the calling owner.
func (s *Service) LinkWithCode(ctx context.Context, owner server.Principal, r LinkRequest) (server.Link, error) {
	if _, err := s.store.Vehicle(ctx, r.VIN); err != nil {
		return server.Link{}, err
	}
	now := s.now().UTC()
	if err := s.store.TakeLinkCode(ctx, r.VIN, accounts.HashToken(r.VIN+":"+r.Code), now); errors.Is(err, server.ErrNotFound) {
		return server.Link{}, server.CodedErrorf(server.KindForbidden, errcode.InvalidLinkCode, "that link code is wrong or expired; show a new one on the vehicle (roadsign-agent link-code) and try again")
	} else if err != nil {
		return server.Link{}, err
	}
	return s.link(ctx, owner, r.VIN, now, "owner.link")
}

func (s *Service) link(ctx context.Context, owner server.Principal, vin string, now time.Time, action string) (server.Link, error) {
	l, err := s.store.Link(ctx, vin)
	switch {
	case errors.Is(err, server.ErrNotFound):
		l = server.Link{VIN: vin, OwnerID: owner.ID, LinkedAt: now, SubscriptionEnds: now.Add(s.cfg.Subscription)}
	case err != nil:
		return l, err
	case l.OwnerID == owner.ID:
		return l, nil
	default:
		// A claim: the current owner's link and services stay as they are
		// until the owner or a dealer accepts it.
		l.PendingOwnerID, l.PendingSince = owner.ID, now
		if err := s.store.SaveLink(ctx, l); err != nil {
			return l, err
		}
		if err := auditlog.Record(ctx, s.store, now, owner, "owner.claim", vin, "claims a vehicle linked to another owner"); err != nil {
			return l, err
		}
		return l, server.CodedErrorf(server.KindConflict, errcode.LinkedToPreviousOwner, "%s is still linked to its previous owner; your claim is recorded: they can accept it in their portal, or a dealer can transfer the car to you", vin)
	}
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	return l, auditlog.Record(ctx, s.store, now, owner, action, vin, "owner="+owner.Name)
}

// Release ends the calling owner's link (the car was sold). A pending
// claim does not take over: the new owner links with the car's code.
func (s *Service) Release(ctx context.Context, owner server.Principal, vin string) error {
	l, err := s.ownLink(ctx, owner, vin)
	if err != nil {
		return err
	}
	if err := s.store.DeleteLink(ctx, vin); err != nil {
		return err
	}
	detail := ""
	if l.PendingOwnerID != "" {
		detail = "pending claim by " + l.PendingOwnerID + " dropped"
	}
	return auditlog.Record(ctx, s.store, s.now().UTC(), owner, "owner.release", vin, detail)
}

func (s *Service) ownLink(ctx context.Context, owner server.Principal, vin string) (server.Link, error) {
	l, err := s.store.Link(ctx, vin)
	if errors.Is(err, server.ErrNotFound) || (err == nil && l.OwnerID != owner.ID) {
		return l, server.Errorf(server.KindNotFound, "%s is not linked to your account", vin)
	}
	return l, err
}

// ClaimDecision is the body of the claim routes.
type ClaimDecision struct {
	Decision string `json:"decision"` // accept or reject
	Reason   string `json:"reason,omitempty"`
}

// DecideClaim accepts (the car moves to the claimant, with a new
// subscription) or rejects a pending claim. The owner decides for their
// car (asOwner); a dealer or admin for any, giving a reason.
func (s *Service) DecideClaim(ctx context.Context, by server.Principal, vin string, d ClaimDecision, asOwner bool) (server.Link, error) {
	var l server.Link
	var err error
	if !asOwner {
		if err := s.reach(ctx, by, vin); err != nil {
			return l, err
		}
	}
	if asOwner {
		l, err = s.ownLink(ctx, by, vin)
	} else {
		l, err = s.store.Link(ctx, vin)
		if errors.Is(err, server.ErrNotFound) {
			return l, server.Errorf(server.KindNotFound, "%s is not linked to any owner", vin)
		}
		if err == nil && strings.TrimSpace(d.Reason) == "" {
			return l, server.Errorf(server.KindInvalid, "reason is required (it is audited)")
		}
	}
	if err != nil {
		return l, err
	}
	if l.PendingOwnerID == "" {
		return l, server.Errorf(server.KindConflict, "nobody claims %s", vin)
	}
	now := s.now().UTC()
	claimant := l.PendingOwnerID
	switch d.Decision {
	case "accept":
		l = server.Link{VIN: vin, OwnerID: claimant, LinkedAt: now, SubscriptionEnds: now.Add(s.cfg.Subscription)}
	case "reject":
		l.PendingOwnerID, l.PendingSince = "", time.Time{}
	default:
		return l, server.Errorf(server.KindInvalid, "decision %q: want accept or reject", d.Decision)
	}
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	detail := "claimant=" + claimant
	if d.Reason != "" {
		detail += fmt.Sprintf(" reason=%q", d.Reason)
	}
	return l, auditlog.Record(ctx, s.store, now, by, "owner.claim_"+d.Decision, vin, detail)
}

// maxSubscriptionYears is the longest subscription a dealer may set, by
// transfer or by renewals, from now.
const maxSubscriptionYears = 10

// TransferRequest is the body of POST /api/v1/vehicles/{vin}/owner.
type TransferRequest struct {
	Owner            string    `json:"owner"` // account name
	SubscriptionEnds time.Time `json:"subscriptionEnds,omitzero"`
}

// Transfer links vin to another owner (dealer approval or transfer).
func (s *Service) Transfer(ctx context.Context, by server.Principal, vin string, r TransferRequest) (server.Link, error) {
	if err := s.reach(ctx, by, vin); err != nil {
		return server.Link{}, err
	}
	to, err := s.store.AccountByName(ctx, r.Owner)
	if errors.Is(err, server.ErrNotFound) || (err == nil && !to.Roles.Has(server.RoleOwner)) {
		return server.Link{}, server.Errorf(server.KindInvalid, "no owner account named %q", r.Owner)
	}
	if err != nil {
		return server.Link{}, err
	}
	now := s.now().UTC()
	l := server.Link{VIN: vin, OwnerID: to.ID, LinkedAt: now, SubscriptionEnds: now.Add(s.cfg.Subscription)}
	if !r.SubscriptionEnds.IsZero() {
		if r.SubscriptionEnds.After(now.AddDate(maxSubscriptionYears, 0, 0)) {
			return l, server.Errorf(server.KindInvalid, "subscriptionEnds %s is more than %d years away; give a real end date", r.SubscriptionEnds.Format(time.DateOnly), maxSubscriptionYears)
		}
		l.SubscriptionEnds = r.SubscriptionEnds.UTC()
	}
	prev, _ := s.store.Link(ctx, vin)
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	return l, auditlog.Record(ctx, s.store, now, by, "owner.transfer", vin, fmt.Sprintf("from=%s to=%s subscriptionEnds=%s", prev.OwnerID, to.ID, l.SubscriptionEnds.Format(time.RFC3339)))
}

// Renew extends vin's subscription by a year, from its end or from now,
// whichever is later (a dealer's renewal).
func (s *Service) Renew(ctx context.Context, by server.Principal, vin string) (server.Link, error) {
	if err := s.reach(ctx, by, vin); err != nil {
		return server.Link{}, err
	}
	l, err := s.store.Link(ctx, vin)
	if errors.Is(err, server.ErrNotFound) {
		return l, server.Errorf(server.KindConflict, "%s is not linked to an owner; link it first, then renew", vin)
	}
	if err != nil {
		return l, err
	}
	now := s.now().UTC()
	from := l.SubscriptionEnds
	if now.After(from) {
		from = now
	}
	end := from.AddDate(1, 0, 0)
	if end.After(now.AddDate(maxSubscriptionYears, 0, 0)) {
		return l, server.CodedErrorf(server.KindConflict, errcode.SubscriptionCap,
			"%s's subscription already runs until %s; a renewal may not take it more than %d years ahead", vin,
			l.SubscriptionEnds.Format(time.DateOnly), maxSubscriptionYears)
	}
	l.SubscriptionEnds = end
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	return l, auditlog.Record(ctx, s.store, now, by, "owner.renew", vin, "subscriptionEnds="+l.SubscriptionEnds.Format(time.RFC3339))
}

// Owns reports whether owner is linked to vin.
func (s *Service) Owns(ctx context.Context, owner server.Principal, vin string) (bool, error) {
	l, err := s.store.Link(ctx, vin)
	if errors.Is(err, server.ErrNotFound) {
		return false, nil
	}
	return err == nil && l.OwnerID == owner.ID, err
}

// Mine lists the calling owner's links.
func (s *Service) Mine(ctx context.Context, owner server.Principal) ([]server.Link, error) {
	return s.store.LinksByOwner(ctx, owner.ID)
}

// SubscriptionState is "active" or "expired".
func (s *Service) SubscriptionState(l server.Link) string {
	if s.now().After(l.SubscriptionEnds) {
		return "expired"
	}
	return "active"
}

// reach is nil when by may act on vin's vehicle: a dealer only in its
// regions.
func (s *Service) reach(ctx context.Context, by server.Principal, vin string) error {
	v, err := s.store.Vehicle(ctx, vin)
	if err != nil {
		return err
	}
	return by.Reach(v)
}
