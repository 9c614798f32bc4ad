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
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
)

// Service manages links.
type Service struct {
	store server.Store
	now   func() time.Time
	// Subscription is how long a new link's subscription runs.
	Subscription time.Duration
	// CodeTTL is how long a link code is valid.
	CodeTTL time.Duration
}

// New returns the owners service.
func New(store server.Store, now func() time.Time) *Service {
	return &Service{store: store, now: now, Subscription: 365 * 24 * time.Hour, CodeTTL: 15 * time.Minute}
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
	exp := s.now().Add(s.CodeTTL).UTC()
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
func (s *Service) LinkWithCode(ctx context.Context, owner accounts.Principal, r LinkRequest) (server.Link, error) {
	if _, err := s.store.Vehicle(ctx, r.VIN); errors.Is(err, server.ErrNotFound) {
		return server.Link{}, server.Errorf(server.KindNotFound, "no vehicle %s is registered", r.VIN)
	} else if err != nil {
		return server.Link{}, err
	}
	now := s.now().UTC()
	if err := s.store.TakeLinkCode(ctx, r.VIN, accounts.HashToken(r.VIN+":"+r.Code), now); errors.Is(err, server.ErrNotFound) {
		return server.Link{}, server.CodedErrorf(server.KindForbidden, "invalid_link_code", "that link code is wrong or expired; show a new one on the vehicle (roadsign-agent link-code) and try again")
	} else if err != nil {
		return server.Link{}, err
	}
	return s.link(ctx, owner, r.VIN, now, "owner.link")
}

func (s *Service) link(ctx context.Context, owner accounts.Principal, vin string, now time.Time, action string) (server.Link, error) {
	l, err := s.store.Link(ctx, vin)
	switch {
	case errors.Is(err, server.ErrNotFound):
		l = server.Link{VIN: vin, OwnerID: owner.ID, LinkedAt: now, SubscriptionEnds: now.Add(s.Subscription)}
	case err != nil:
		return l, err
	case l.OwnerID == owner.ID:
		return l, nil
	default:
		l.PendingOwnerID = owner.ID
		if err := s.store.SaveLink(ctx, l); err != nil {
			return l, err
		}
		accounts.Audit(ctx, s.store, now, owner, "owner.link_pending", vin, "vehicle linked to a previous owner")
		return l, server.CodedErrorf(server.KindConflict, "linked_to_previous_owner", "%s is still linked to its previous owner; they can release it in their portal, or a dealer can transfer it to you", vin)
	}
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	return l, accounts.Audit(ctx, s.store, now, owner, action, vin, "owner="+owner.Name)
}

// Release ends the calling owner's link; a pending new owner takes over.
func (s *Service) Release(ctx context.Context, owner accounts.Principal, vin string) error {
	l, err := s.store.Link(ctx, vin)
	if errors.Is(err, server.ErrNotFound) || (err == nil && l.OwnerID != owner.ID) {
		return server.Errorf(server.KindNotFound, "%s is not linked to your account", vin)
	}
	if err != nil {
		return err
	}
	now := s.now().UTC()
	if l.PendingOwnerID != "" {
		err = s.store.SaveLink(ctx, server.Link{VIN: vin, OwnerID: l.PendingOwnerID, LinkedAt: now, SubscriptionEnds: now.Add(s.Subscription)})
	} else {
		err = s.store.DeleteLink(ctx, vin)
	}
	if err != nil {
		return err
	}
	return accounts.Audit(ctx, s.store, now, owner, "owner.release", vin, "to="+l.PendingOwnerID)
}

// TransferRequest is the body of POST /api/v1/vehicles/{vin}/owner.
type TransferRequest struct {
	Owner            string    `json:"owner"` // account name
	SubscriptionEnds time.Time `json:"subscriptionEnds,omitzero"`
}

// Transfer links vin to another owner (dealer approval or transfer).
func (s *Service) Transfer(ctx context.Context, by accounts.Principal, vin string, r TransferRequest) (server.Link, error) {
	if _, err := s.store.Vehicle(ctx, vin); errors.Is(err, server.ErrNotFound) {
		return server.Link{}, server.Errorf(server.KindNotFound, "no vehicle %s is registered", vin)
	}
	to, err := s.store.AccountByName(ctx, r.Owner)
	if errors.Is(err, server.ErrNotFound) || (err == nil && to.Role != server.RoleOwner) {
		return server.Link{}, server.Errorf(server.KindInvalid, "no owner account named %q", r.Owner)
	}
	if err != nil {
		return server.Link{}, err
	}
	now := s.now().UTC()
	l := server.Link{VIN: vin, OwnerID: to.ID, LinkedAt: now, SubscriptionEnds: now.Add(s.Subscription)}
	if !r.SubscriptionEnds.IsZero() {
		l.SubscriptionEnds = r.SubscriptionEnds.UTC()
	}
	prev, _ := s.store.Link(ctx, vin)
	if err := s.store.SaveLink(ctx, l); err != nil {
		return l, err
	}
	return l, accounts.Audit(ctx, s.store, now, by, "owner.transfer", vin, fmt.Sprintf("from=%s to=%s subscriptionEnds=%s", prev.OwnerID, to.ID, l.SubscriptionEnds.Format(time.RFC3339)))
}

// Owns reports whether owner is linked to vin.
func (s *Service) Owns(ctx context.Context, owner accounts.Principal, vin string) (bool, error) {
	l, err := s.store.Link(ctx, vin)
	if errors.Is(err, server.ErrNotFound) {
		return false, nil
	}
	return err == nil && l.OwnerID == owner.ID, err
}

// Mine lists the calling owner's links.
func (s *Service) Mine(ctx context.Context, owner accounts.Principal) ([]server.Link, error) {
	return s.store.LinksByOwner(ctx, owner.ID)
}

// SubscriptionState is "active" or "expired".
func (s *Service) SubscriptionState(l server.Link) string {
	if s.now().After(l.SubscriptionEnds) {
		return "expired"
	}
	return "active"
}
