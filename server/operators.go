package server

import (
	"context"
	"time"
)

// APIToken is a scoped, expiring bearer token of an account, for a
// person's script or a system. Only its sha256 is stored.
type APIToken struct {
	ID        string
	AccountID string
	Name      string
	// Roles are the token's scope: a subset of the account's roles, and
	// cut to the account's roles as they are when it is used.
	Roles     Roles
	TokenHash string
	CreatedAt time.Time
	ExpiresAt time.Time
	RevokedAt time.Time
	// LastUsedAt and LastUsedFrom (an address) are its last use.
	LastUsedAt   time.Time
	LastUsedFrom string
}

// APITokens are the accounts' API tokens.
type APITokens interface {
	CreateAPIToken(ctx context.Context, t APIToken) error
	// APITokenByHash returns ErrNotFound for no such token.
	APITokenByHash(ctx context.Context, hash string) (APIToken, error)
	APIToken(ctx context.Context, id string) (APIToken, error)
	// APITokens lists an account's tokens ("": every account's), newest first.
	APITokens(ctx context.Context, accountID string) ([]APIToken, error)
	RevokeAPIToken(ctx context.Context, id string, at time.Time) error
	TouchAPIToken(ctx context.Context, id string, at time.Time, from string) error
}

// Approval states.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalRefused  = "refused"
	// ApprovalVoided: what it approved changed before it was used.
	ApprovalVoided = "voided"
	// ApprovalUsed: the approved action was taken (once).
	ApprovalUsed = "used"
)

// Approval is a request that a second person approve one action on one
// subject (four eyes). What names exactly what is approved; Fingerprint
// is its sha256, and an approval is good only for an action whose
// fingerprint is the same.
type Approval struct {
	ID      string
	Action  string // campaign.start, campaign.waves, jobs.create
	Subject string // the campaign ID, or the job batch's fingerprint
	// What is the approved content, as JSON (campaign, image sha256 and
	// version, waves, selector; or the jobs' VINs and image).
	What                       string
	Fingerprint                string
	State                      string
	RequestedByID, RequestedBy string
	RequestedAt                time.Time
	DecidedByID, DecidedBy     string
	Reason                     string
	DecidedAt                  time.Time
}

// Approvals are the four-eyes approvals.
type Approvals interface {
	CreateApproval(ctx context.Context, a Approval) error
	Approval(ctx context.Context, id string) (Approval, error)
	// ApprovalsOf lists the approvals of a subject, newest first;
	// ApprovalsIn those in one of states, newest first (at most limit).
	ApprovalsOf(ctx context.Context, subject string) ([]Approval, error)
	ApprovalsIn(ctx context.Context, limit int, states ...string) ([]Approval, error)
	// SetApprovalState moves an approval from state from to a.State with
	// a's decision fields; ErrConflict if it is no longer in from.
	SetApprovalState(ctx context.Context, a Approval, from string) error
}

// Webhook is a subscription: events of these types are POSTed to URL,
// signed with Secret.
type Webhook struct {
	ID        string
	URL       string
	Events    []string
	Secret    string
	CreatedBy string
	CreatedAt time.Time
	Disabled  bool
}

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	// DeliveryFailed: retried until its time ran out.
	DeliveryFailed = "failed"
)

// Delivery is one event for one webhook, queued in the database so that
// it survives a restart, and retried until delivered or out of time.
type Delivery struct {
	ID        string // the idempotency key (X-Roadsign-Delivery)
	WebhookID string
	Event     string
	Body      string
	State     string
	Attempts  int
	CreatedAt time.Time
	NextAt    time.Time
	// LastStatus and LastError are the last attempt's HTTP status (0:
	// none) and error.
	LastStatus  int
	LastError   string
	DeliveredAt time.Time
}

// Webhooks are the subscriptions and their delivery queue.
type Webhooks interface {
	CreateWebhook(ctx context.Context, w Webhook) error
	Webhook(ctx context.Context, id string) (Webhook, error)
	ListWebhooks(ctx context.Context) ([]Webhook, error)
	DeleteWebhook(ctx context.Context, id string) error
	// EnqueueDeliveries stores deliveries (one per subscribed webhook).
	EnqueueDeliveries(ctx context.Context, ds []Delivery) error
	// DueDeliveries claims up to limit pending deliveries due at now: each
	// is held until holdUntil so that no other replica sends it meanwhile.
	DueDeliveries(ctx context.Context, now, holdUntil time.Time, limit int) ([]Delivery, error)
	// UpdateDelivery stores an attempt's outcome.
	UpdateDelivery(ctx context.Context, d Delivery) error
	// Deliveries lists the newest deliveries (of one webhook, or all).
	Deliveries(ctx context.Context, webhookID string, limit int) ([]Delivery, error)
}

// Notify hears of events other systems may subscribe to (webhooks): the
// event type and its data. A nil Notify hears nothing.
type Notify func(ctx context.Context, event string, data any)

// Emit tells n of an event, if n is set.
func (n Notify) Emit(ctx context.Context, event string, data any) {
	if n != nil {
		n(ctx, event, data)
	}
}

// JobChange is the data of a job.state_changed event.
type JobChange struct {
	Job      string `json:"job"`
	VIN      string `json:"vin"`
	ECU      string `json:"ecu"`
	Version  string `json:"version"`
	Origin   string `json:"origin"`
	Campaign string `json:"campaign,omitempty"`
	From     string `json:"from"`
	To       string `json:"to"`
	Message  string `json:"message,omitempty"`
}

// JobChanged is the job.state_changed data for j moving from from.
func JobChanged(j Job, from, msg string) JobChange {
	return JobChange{Job: j.ID, VIN: j.VIN, ECU: j.ECUSerial, Version: j.Version, Origin: j.Origin, Campaign: j.CampaignID, From: from, To: j.State, Message: msg}
}
