package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Store errors. Backends return *Error values of kind KindNotFound or
// KindConflict, for which errors.Is(err, ErrNotFound) (ErrConflict) holds:
// services tell them apart that way and may say more, and one they pass
// on untranslated still reaches the caller as a 404 or 409, never a 500.
var (
	ErrNotFound = &Error{Kind: KindNotFound, Code: errcode.NotFound, Message: "not found"}
	ErrConflict = &Error{Kind: KindConflict, Code: errcode.Conflict, Message: "conflict"}
)

// NoVehicle is the error for a VIN that is not registered.
func NoVehicle(vin string) *Error {
	return Errorf(KindNotFound, "no vehicle %s is registered", vin)
}

// Account is a person or system that calls the API with a bearer token.
type Account struct {
	ID    string
	Roles Roles
	// Regions scope a dealer: the vehicle regions it may act on.
	Regions []string
	// Subject names a single sign-on account: "ISSUER SUBJECT" ("" for a
	// local account). Its roles come from the provider at each log-in.
	Subject      string
	Name         string
	PasswordHash string // argon2id, owners only
	TokenHash    string // sha256 of the bearer token, hex
	CreatedAt    time.Time
	// Disabled accounts' tokens and sessions stop working at once.
	Disabled bool
}

// Session is a portal session, kept on the server so it can be ended.
type Session struct {
	IDHash    string // sha256 of the cookie's random ID, hex
	AccountID string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// ECU is one ECU of a registered vehicle and what it last reported.
type ECU struct {
	Serial     string `json:"serial"`
	Type       string `json:"type"`
	HardwareID string `json:"hardwareId"`
	// What the vehicle last reported as installed.
	InstalledTarget  string    `json:"installedTarget,omitempty"`
	InstalledVersion string    `json:"installedVersion,omitempty"`
	InstalledSHA256  string    `json:"installedSha256,omitempty"`
	ReportedAt       time.Time `json:"reportedAt,omitzero"`
	// PublicKey is the ECU's own ed25519 key, which signs its version
	// reports (Uptane); nil for a vehicle registered without ECU keys.
	// The primary's is the vehicle's key.
	PublicKey []byte `json:"publicKey,omitempty"`
	// ReportCounter is the counter of its last accepted signed report: the
	// next must be higher.
	ReportCounter int64 `json:"reportCounter,omitempty"`
	// Attack is the last refusal the ECU reported in a signed report
	// (what it was sent and why it would not install it), at AttackAt.
	Attack   string    `json:"attack,omitempty"`
	AttackAt time.Time `json:"attackAt,omitzero"`
	// EncryptionKey is the ECU's X25519 key, separate from its signing
	// key: encrypted images' file keys are wrapped to it. Nil until
	// registered, or first reported in a check-in.
	EncryptionKey []byte `json:"encryptionKey,omitempty"`
}

// Vehicle is a registered vehicle.
type Vehicle struct {
	VIN       string    `json:"vin"`
	Model     string    `json:"model"`
	Year      int       `json:"year"`
	Region    string    `json:"region"`
	PublicKey []byte    `json:"publicKey"`
	ECUs      []ECU     `json:"ecus"`
	CreatedAt time.Time `json:"createdAt"`
	LastSeen  time.Time `json:"lastSeen,omitzero"`
	// AuthState is the outcome of the last connected-services handshake
	// ("authorized" or a failure code), AuthAt when it happened,
	// AuthMessage what the vehicle was told and AuthExpires when the
	// token it got (if authorized) runs out.
	AuthState   string    `json:"authState,omitempty"`
	AuthAt      time.Time `json:"authAt,omitzero"`
	AuthMessage string    `json:"authMessage,omitempty"`
	AuthExpires time.Time `json:"authExpires,omitzero"`
	// DTCs are the trouble codes the vehicle last reported, comma-separated.
	DTCs string `json:"dtcs,omitempty"`
	// SignalBars is the DCM's cellular signal at SignalAt (-1: never
	// reported).
	SignalBars int       `json:"signalBars"`
	SignalAt   time.Time `json:"signalAt,omitzero"`
	// RequestFaults are the vehicle's last refused requests: evidence for
	// the diagnosis.
	RequestFaults RequestFaults `json:"requestFaults"`
	// TimeUntrusted is why the vehicle held no trusted time at its last
	// check-in ("" when it did): it installs nothing until it does.
	TimeUntrusted string `json:"timeUntrusted,omitempty"`
}

// RequestFaults are the last requests for a VIN the server refused before
// they were the vehicle's: a signature that does not verify with the
// registered key (a replaced DCM, or someone else), and a valid signature
// with the vehicle's clock off (ClockSkew: the server's time minus the
// vehicle's).
type RequestFaults struct {
	BadSignatureAt    time.Time     `json:"badSignatureAt,omitzero"`
	BadSignatureCount int           `json:"badSignatureCount,omitempty"`
	ClockSkewAt       time.Time     `json:"clockSkewAt,omitzero"`
	ClockSkew         time.Duration `json:"clockSkew,omitempty"`
	// CheckInRefusedAt is the last check-in the vehicle signed that the
	// server refused (its manifest names units not registered for the
	// VIN, or is malformed), and CheckInRefused why.
	CheckInRefusedAt time.Time `json:"checkInRefusedAt,omitzero"`
	CheckInRefused   string    `json:"checkInRefused,omitempty"`
}

// RequestFault is one refused request: its kind, the vehicle clock's
// offset (clock skew: the server's time minus the vehicle's), and, for a
// refused check-in, why.
type RequestFault struct {
	Kind   string
	Skew   time.Duration
	Detail string
}

// Request fault kinds.
const (
	FaultBadSignature   = errcode.BadSignature
	FaultClockSkew      = errcode.ClockSkew
	FaultCheckInRefused = "checkin_refused"
)

// Health is what a vehicle reports about itself at a check-in.
type Health struct {
	// Active is the active trouble codes, comma-separated.
	Active   string
	Episodes []DTCEpisode
	// SignalBars is the reading at SignalAt; a zero SignalAt: no reading.
	SignalBars int
	SignalAt   time.Time
	// Unsigned: the check-in carries no ECU-signed reports, which a
	// vehicle whose ECUs have keys of their own must send: ReportECUs
	// then refuses it (ecu_missing) in the same statement, without a
	// read of its own.
	Unsigned bool
	// TimeUntrusted is why the vehicle holds no trusted time ("": it does).
	TimeUntrusted string
}

// DTCEpisode is one trouble code episode as the vehicle reported it, the
// shared type of internal/vehicleauth (its SignalBars is nil when
// unknown), with ReportedAt set when the server received it.
type DTCEpisode = vehicleauth.DTCEpisode

// HealthCheck is one of the service's own checks (those of /status).
type HealthCheck struct {
	Name   string
	OK     bool
	Detail string
}

// Finding is a diagnosis finding as recorded: open from FirstSeen until
// ResolvedAt.
type Finding struct {
	VIN        string    `json:"vin"`
	Code       string    `json:"code"`
	FirstSeen  time.Time `json:"firstSeen"`
	LastSeen   time.Time `json:"lastSeen"`
	ResolvedAt time.Time `json:"resolvedAt,omitzero"`
}

// FindingCount counts one finding code across the fleet.
type FindingCount struct {
	Code     string `json:"code"`
	Open     int    `json:"open"`
	Resolved int    `json:"resolved"`
}

// ECUBySerial returns the vehicle's ECU with that serial.
func (v *Vehicle) ECUBySerial(serial string) (ECU, bool) {
	for _, e := range v.ECUs {
		if e.Serial == serial {
			return e, true
		}
	}
	return ECU{}, false
}

// VehicleFilter selects vehicles; results are ordered by VIN and paged
// with After (the last VIN of the previous page).
type VehicleFilter struct {
	HardwareID string
	// Regions, if any, keeps only vehicles of these regions (a dealer's).
	Regions []string
	After   string
	Limit   int
}

// Job states.
const (
	JobQueued     = "queued"
	JobInProgress = "in_progress"
	JobSucceeded  = "succeeded"
	JobFailed     = "failed"
	JobRolledBack = "rolled_back"
	JobCanceled   = "canceled"
	JobTimedOut   = "timed_out"
)

// Job origins: who decided the install.
const (
	// OriginDealer is a job a dealer or admin created.
	OriginDealer = "dealer"
	// OriginAutoAssign is an install the server's --auto-assign policy
	// decided; it is recorded as a job so it has progress and history.
	OriginAutoAssign = "auto-assign"
	// OriginCampaign is an install a campaign wave assigned.
	OriginCampaign = "campaign"
)

// Window is a daily maintenance window in the vehicle's local time: the
// agent installs only between Start and End ("HH:MM", End may be past
// midnight) in time zone TZ.
type Window struct {
	Start string `json:"start"`
	End   string `json:"end"`
	TZ    string `json:"tz"`
}

// JobTerminal reports whether a job in state s is finished.
func JobTerminal(s string) bool {
	switch s {
	case JobSucceeded, JobFailed, JobRolledBack, JobCanceled, JobTimedOut:
		return true
	}
	return false
}

// Job is a dealer reflash job: install one image on one ECU of one vehicle.
type Job struct {
	ID              string    `json:"id"`
	VIN             string    `json:"vin"`
	ECUSerial       string    `json:"ecuSerial"`
	ECUType         string    `json:"ecuType"`
	TargetPath      string    `json:"target"`
	Version         string    `json:"version"`
	Forced          bool      `json:"forced"`
	Origin          string    `json:"origin"`
	Reason          string    `json:"reason"`
	State           string    `json:"state"`
	CreatedBy       string    `json:"createdBy"`
	CreatedAt       time.Time `json:"createdAt"`
	UpdatedAt       time.Time `json:"updatedAt"`
	Attempts        int       `json:"attempts"`
	MaxAttempts     int       `json:"maxAttempts"`
	NextAttemptAt   time.Time `json:"nextAttemptAt,omitzero"`
	CancelRequested bool      `json:"cancelRequested,omitempty"`
	Phase           string    `json:"phase,omitempty"` // last reported progress event
	// EventCount is how many events the job has (len(Events) when they
	// are loaded; JobHead loads the count alone).
	EventCount int `json:"-"`
	// CampaignID and Window are set for a campaign's job.
	CampaignID string  `json:"campaignId,omitempty"`
	Window     *Window `json:"window,omitempty"`
	// Parts, for an update set (several ECUs that install together, all
	// or none), are its ECUs in install order; the fields above then
	// describe the first. Nil for a job on one ECU.
	Parts  []JobPart  `json:"ecus,omitempty"`
	Events []JobEvent `json:"events"`
}

// JobPart is one ECU of an update set and the image it gets.
type JobPart struct {
	ECUSerial  string `json:"ecuSerial"`
	ECUType    string `json:"ecuType"`
	TargetPath string `json:"target"`
	Version    string `json:"version"`
}

// AllParts are the ECUs the job installs on: its parts, or the one ECU.
func (j Job) AllParts() []JobPart {
	if len(j.Parts) > 0 {
		return j.Parts
	}
	return []JobPart{{ECUSerial: j.ECUSerial, ECUType: j.ECUType, TargetPath: j.TargetPath, Version: j.Version}}
}

// RunningWith is the versions v's ECUs run by ECU type, as last
// reported, with parts installed ("" where an ECU never reported): what
// an image's declared requirements are checked against.
func (v Vehicle) RunningWith(parts []JobPart) map[string][]string {
	run := map[string][]string{}
	for _, e := range v.ECUs {
		ver := e.InstalledVersion
		for _, p := range parts {
			if p.ECUSerial == e.Serial {
				ver = p.Version
			}
		}
		run[e.Type] = append(run[e.Type], ver)
	}
	return run
}

// Part is what the job installs on the ECU serial, if it covers it.
func (j Job) Part(serial string) (JobPart, bool) {
	for _, p := range j.AllParts() {
		if p.ECUSerial == serial {
			return p, true
		}
	}
	return JobPart{}, false
}

// JobEvent is one entry of a job's history.
type JobEvent struct {
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"` // queued, downloading, installing, rebooting, succeeded, ...
	Percent int       `json:"percent,omitempty"`
	Message string    `json:"message,omitempty"`
}

// AuditEntry is one append-only audit record. ActorID identifies the
// actor (an account's UUID, "bootstrap-admin", a VIN for a vehicle, or
// "server"); Actor is its name at the time, for people.
type AuditEntry struct {
	ID      int64     `json:"id"`
	At      time.Time `json:"at"`
	ActorID string    `json:"actorId"`
	Actor   string    `json:"actor"`
	Role    string    `json:"role"`
	Action  string    `json:"action"`
	Subject string    `json:"subject"`
	Detail  string    `json:"detail,omitempty"`
	// Seq, PrevHash and Hash chain the entry to the one before it (see
	// AuditHash); the store sets them on append.
	Seq      int64  `json:"seq"`
	PrevHash string `json:"prevHash,omitempty"`
	Hash     string `json:"hash"`
}

// SoftwareRecord is one install attempt on one ECU, for the vehicle's
// software record (UN R156 / ISO 24089): what it ran before and after,
// how the image arrived, and the outcome.
type SoftwareRecord struct {
	ID          int64     `json:"id"`
	VIN         string    `json:"vin"`
	ECUSerial   string    `json:"ecuSerial"`
	ECUType     string    `json:"ecuType"`
	At          time.Time `json:"at"`
	FromVersion string    `json:"fromVersion"`
	FromSHA256  string    `json:"fromSha256"`
	ToVersion   string    `json:"toVersion"`
	ToSHA256    string    `json:"toSha256"`
	// Via is how the image arrived: dealer, auto-assign, campaign, usb.
	Via        string `json:"via"`
	JobID      string `json:"jobId,omitempty"`
	CampaignID string `json:"campaignId,omitempty"`
	// Outcome: installed, rolled_back, failed.
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	// Parts, for an update set, are its ECUs (the fields above then
	// summarise the set: ECU type "set", serials and versions joined by
	// " + "). Nil for one ECU.
	Parts []RecordPart `json:"parts,omitempty"`
}

// RecordPart is one ECU of an update set in the software record.
type RecordPart struct {
	ECUSerial   string `json:"ecuSerial"`
	ECUType     string `json:"ecuType"`
	FromVersion string `json:"fromVersion"`
	FromSHA256  string `json:"fromSha256"`
	ToVersion   string `json:"toVersion"`
	ToSHA256    string `json:"toSha256"`
}

// RecordQuery is one page of a vehicle's software record: oldest first
// after AfterID, or, with NewestFirst, newest first before BeforeID (0:
// from the newest). Limit is at least 1 and at most MaxRecordPage.
type RecordQuery struct {
	AfterID, BeforeID int64
	NewestFirst       bool
	Limit             int
}

// MaxRecordPage is the largest page of a software record read at once.
const MaxRecordPage = 1000

// MaxEpisodesPerVehicle is how many trouble code episodes the store keeps
// per vehicle: the most recently seen (the diagnosis reads 100).
const MaxEpisodesPerVehicle = 256

// DirectorMeta is one signed director metadata file of a VIN.
type DirectorMeta struct {
	VIN     string
	Role    string // targets, snapshot, timestamp
	Version int64
	Body    []byte
	Expires time.Time
}

// DirectorHead is a VIN's current director state.
type DirectorHead struct {
	VIN              string
	TargetsVersion   int64
	SnapshotVersion  int64
	TimestampVersion int64
	// AssignmentHash identifies what the current targets assign, so
	// unchanged assignments are not re-signed.
	AssignmentHash   string
	TimestampExpires time.Time
	// Timestamp is the body of timestamp.json at TimestampVersion, as
	// DirectorHead reads it (nil when there is none): a poll of
	// unchanged metadata is answered from the one read.
	Timestamp []byte
	// Basis is what the assignment was last decided on (see
	// director.Service.Timestamp); empty when it must be decided again
	// at every poll.
	Basis string
	// VehicleGen and CampaignGen are read with the head, not stored in
	// it: how many times the vehicle's own assignment inputs (its jobs,
	// the images its ECUs report, its ECUs) and any campaign have
	// changed so far.
	VehicleGen, CampaignGen int64
}

// AuthRecord is the outcome of one connected-services handshake.
type AuthRecord struct {
	State   string // "authorized" or a failure code
	Message string
	At      time.Time
	Expires time.Time // the token's expiry, when authorized
}

// Link ties a vehicle to its owner's account, with the owner's
// connected-services subscription.
type Link struct {
	VIN              string    `json:"vin"`
	OwnerID          string    `json:"ownerId"`
	LinkedAt         time.Time `json:"linkedAt"`
	SubscriptionEnds time.Time `json:"subscriptionEnds"`
	// PendingOwnerID is someone who showed the car's link code while it
	// was linked to this owner: a claim the owner (or a dealer) accepts
	// or rejects. It never affects the owner's connected services.
	PendingOwnerID string    `json:"pendingOwnerId,omitempty"`
	PendingSince   time.Time `json:"pendingSince,omitzero"`
}

// Store is the server's state: every role below, in one database. Every
// method is safe for concurrent use by several server replicas sharing it.
// Services take the roles they use, never the whole Store.
type Store interface {
	Accounts
	Sessions
	Vehicles
	Findings
	Jobs
	Audit
	Records
	DirectorMetadata
	Links
	Campaigns
	Rollouts
	Leases
	Throttles
	APITokens
	Approvals
	Webhooks
	Ping(ctx context.Context) error
	Close() error
}

// Throttles keep log-in throttling in the database, so that every
// replica counts the same attempts.
type Throttles interface {
	// ThrottleEntry is key's entry (the zero entry when there is none).
	ThrottleEntry(ctx context.Context, key string) (ThrottleEntry, error)
	// UpdateThrottle lets fn change key's entry and stores what it
	// returns (the zero entry deletes it), atomically against every
	// replica: no two replicas see the same entry.
	UpdateThrottle(ctx context.Context, key string, fn func(ThrottleEntry) ThrottleEntry) (ThrottleEntry, error)
	// PruneThrottles deletes the entries last used before idle and not
	// locked at now, and then the least recently used beyond keep.
	PruneThrottles(ctx context.Context, idle, now time.Time, keep int) error
}

// ThrottleEntry is one key's throttling state: a token bucket (Tokens,
// refilled since Last) and a run of failures locking it until Until.
type ThrottleEntry struct {
	Tokens   float64
	Last     time.Time
	Failures int
	Until    time.Time
}

// Accounts are the people and systems that log in.
type Accounts interface {
	CreateAccount(ctx context.Context, a Account) error
	AccountByTokenHash(ctx context.Context, tokenHash string) (Account, error)
	AccountByName(ctx context.Context, name string) (Account, error)
	AccountByID(ctx context.Context, id string) (Account, error)
	ListAccounts(ctx context.Context) ([]Account, error)
	SetAccountDisabled(ctx context.Context, id string, disabled bool) error
	SetAccountToken(ctx context.Context, id, tokenHash string) error
	SetAccountPassword(ctx context.Context, id, passwordHash string) error
	// AdminExists reports whether an enabled account holds the admin role.
	AdminExists(ctx context.Context) (bool, error)
	// AccountBySubject finds a single sign-on account.
	AccountBySubject(ctx context.Context, subject string) (Account, error)
	SetAccountRoles(ctx context.Context, id string, roles Roles, regions []string) error
}

// Sessions are the web pages' logged-in sessions.
type Sessions interface {
	CreateSession(ctx context.Context, s Session) error
	Session(ctx context.Context, idHash string) (Session, error)
	DeleteSession(ctx context.Context, idHash string) error
	DeleteSessions(ctx context.Context, accountID string) error
}

// Vehicles are the registered vehicles, their ECUs and keys, and what
// they last reported.
type Vehicles interface {
	// CreateVehicle returns ErrConflict if the VIN or an ECU serial exists.
	CreateVehicle(ctx context.Context, v Vehicle) error
	// Vehicle returns NoVehicle(vin) for an unknown VIN.
	Vehicle(ctx context.Context, vin string) (Vehicle, error)
	// VehicleKey is the vehicle's registered public key alone (every
	// signed vehicle request reads it).
	VehicleKey(ctx context.Context, vin string) ([]byte, error)
	ListVehicles(ctx context.Context, f VehicleFilter) ([]Vehicle, error)
	// ReportECUs records what the vehicle says is installed, its trouble
	// codes and signal; ErrNotFound if an ECU serial is not the vehicle's
	// (nothing is recorded then). An ECU with a ReportCounter (from its
	// signed report) is recorded only if the counter is above its last:
	// else a conflict coded ecu_report_replayed, and nothing is recorded.
	// A non-empty Attack is kept, with the time, until the next one.
	ReportECUs(ctx context.Context, vin string, ecus []ECU, h Health, at time.Time) error
	// ReplaceECU binds a new ECU (serial, hardware, own key) in place of
	// oldSerial, and, unless publicKey is nil, the vehicle's new public
	// key, revoking the old one.
	ReplaceECU(ctx context.Context, vin, oldSerial string, e ECU, publicKey []byte) error
	// SetEncryptionKey records an ECU's encryption key when it has none
	// (registered before it had one, or re-provisioned without); it
	// reports whether it did.
	SetEncryptionKey(ctx context.Context, vin, serial string, key []byte) (bool, error)
	// RecordRequestFault notes a refused request for vin (kind
	// FaultBadSignature, FaultClockSkew or FaultCheckInRefused); nothing
	// for an unknown VIN.
	RecordRequestFault(ctx context.Context, vin string, f RequestFault, at time.Time) error
	// RecordAuth records the outcome of a connected-services handshake.
	RecordAuth(ctx context.Context, vin string, a AuthRecord) error
	// UseNonce records a request nonce; ErrConflict if it was used before.
	UseNonce(ctx context.Context, vin, nonce string, at time.Time) error
	// PruneNonces forgets nonces used before; requests that old are
	// refused for their time anyway.
	PruneNonces(ctx context.Context, before time.Time) (int64, error)
}

// Findings are the diagnosis' evidence of trouble codes and what it found.
type Findings interface {
	// DTCEpisodes lists the vehicle's trouble code episodes that are
	// active or ended after since, newest first.
	DTCEpisodes(ctx context.Context, vin string, since time.Time) ([]DTCEpisode, error)
	// RecordFindings opens the findings in codes that are not open for
	// vin, touches those that are, and resolves the open ones not in codes;
	// it returns the codes it opened and resolved.
	RecordFindings(ctx context.Context, vin string, codes []string, at time.Time) (opened, resolved []string, err error)
	// Findings lists vin's findings, newest first.
	Findings(ctx context.Context, vin string, limit int) ([]Finding, error)
	// FindingCounts counts findings by code across the fleet: open now,
	// and resolved since.
	FindingCounts(ctx context.Context, since time.Time) ([]FindingCount, error)
}

// Jobs are installs asked of one ECU.
type Jobs interface {
	CreateJob(ctx context.Context, j Job) error
	Job(ctx context.Context, id string) (Job, error)
	// JobHead is the job without its events (EventCount says how many):
	// what a state change needs to read.
	JobHead(ctx context.Context, id string) (Job, error)
	JobsByVIN(ctx context.Context, vin string) ([]Job, error)
	// UpdateJob writes j, and appends events to its history, in one
	// transaction, if the stored job is still in state from (optimistic
	// concurrency); ErrConflict otherwise (nothing written).
	UpdateJob(ctx context.Context, j Job, from string, events ...JobEvent) error
	// UpdateJobRecorded is UpdateJob that also appends rec to the
	// software record, in the same transaction: an outcome is never
	// recorded on the job but missing from the record.
	UpdateJobRecorded(ctx context.Context, j Job, from string, rec SoftwareRecord, events ...JobEvent) error
	AddJobEvent(ctx context.Context, jobID string, e JobEvent) error
	// OpenJobs lists jobs not yet finished (for the sweeper), oldest first.
	OpenJobs(ctx context.Context, limit int) ([]Job, error)
	// JobStates counts jobs by state, for /metrics.
	JobStates(ctx context.Context) (map[string]int, error)
}

// Audit is the hash-chained audit log and its signed checkpoints.
type Audit interface {
	AppendAudit(ctx context.Context, e AuditEntry) error
	// AppendAuditGenesis appends the chain's genesis entry, its Detail
	// made by seal from its seq, the hash before it and the count of
	// unchained entries before the chain; false when one exists already.
	AppendAuditGenesis(ctx context.Context, e AuditEntry, seal func(seq int64, prevHash string, legacy int64) string) (bool, error)
	ListAudit(ctx context.Context, afterID int64, limit int) ([]AuditEntry, error)
	// RecentAudit lists entries newest first, before beforeID (0: from
	// the newest).
	RecentAudit(ctx context.Context, beforeID int64, limit int) ([]AuditEntry, error)
	// AuditHead is the last entry's seq and hash (0, "" for none).
	AuditHead(ctx context.Context) (int64, string, error)
	// AddAuditCheckpoint stores a signed checkpoint of the chain's head
	// (replacing one of the same seq); AuditCheckpoints lists them,
	// oldest first.
	AddAuditCheckpoint(ctx context.Context, c AuditCheckpoint) error
	AuditCheckpoints(ctx context.Context) ([]AuditCheckpoint, error)
}

// Records are the vehicles' software records.
type Records interface {
	// AddSoftwareRecord appends to a vehicle's software record;
	// SoftwareRecords lists a page of it.
	AddSoftwareRecord(ctx context.Context, r SoftwareRecord) error
	SoftwareRecords(ctx context.Context, vin string, q RecordQuery) ([]SoftwareRecord, error)
	// AddUSBRecords adds USB installs of one vehicle to its record, each
	// unless the record already has it (same ECU serial and detail), and
	// no more than bring its USB entries since since to perDay; all under
	// one lock of the vehicle, so concurrent check-ins neither repeat nor
	// overrun. It returns those it added.
	AddUSBRecords(ctx context.Context, vin string, recs []SoftwareRecord, perDay int, since time.Time) ([]SoftwareRecord, error)
}

// DirectorMetadata is the per-vehicle director metadata and the image
// repository's version row.
type DirectorMetadata interface {
	DirectorHead(ctx context.Context, vin string) (DirectorHead, error)
	// SaveDirector stores new metadata files and the new head, if the head
	// is still prev (ErrConflict otherwise: another replica got there first).
	SaveDirector(ctx context.Context, prev, next DirectorHead, files []DirectorMeta) error
	// SaveDirectorBasis records the basis an unchanged assignment was
	// decided on again, if the head's timestamp is still version
	// (nothing otherwise: a newer head has a basis of its own).
	SaveDirectorBasis(ctx context.Context, vin string, version int64, basis string) error
	DirectorFile(ctx context.Context, vin, role string, version int64) (DirectorMeta, error)
	// NextBundleVersion returns the next version of the VIN's USB bundle
	// metadata (1, 2, ...), durable and never handed out twice.
	NextBundleVersion(ctx context.Context, vin string) (int64, error)
	// RepoVersion and SetRepoVersion are the image repository's version
	// row: the served timestamp version, raised (never lowered) by the
	// replica that signs, read by the others to notice a change.
	RepoVersion(ctx context.Context) (int64, error)
	SetRepoVersion(ctx context.Context, v int64) error
}

// Links tie vehicles to their owners' accounts.
type Links interface {
	// SetLinkCode stores the (hashed) one-time code a vehicle displays.
	SetLinkCode(ctx context.Context, vin, codeHash string, expires time.Time) error
	// TakeLinkCode consumes the code if it matches and has not expired;
	// ErrNotFound otherwise.
	TakeLinkCode(ctx context.Context, vin, codeHash string, now time.Time) error
	Link(ctx context.Context, vin string) (Link, error)
	LinksByOwner(ctx context.Context, ownerID string) ([]Link, error)
	SaveLink(ctx context.Context, l Link) error
	DeleteLink(ctx context.Context, vin string) error
}

// Campaigns are staged rollouts as operators see them.
type Campaigns interface {
	CreateCampaign(ctx context.Context, c Campaign) error
	Campaign(ctx context.Context, id string) (Campaign, error)
	Campaigns(ctx context.Context, states ...string) ([]Campaign, error)
	// SetCampaignState moves a campaign from one of from to to (an
	// operator's action); ErrConflict if it is in none of them.
	SetCampaignState(ctx context.Context, id string, from []string, to string, at time.Time) error
	// SetCampaignConfig replaces the configuration of a campaign in one of
	// from; ErrConflict if it is in none of them.
	SetCampaignConfig(ctx context.Context, id string, from []string, cfg CampaignConfig, at time.Time) error
	// CampaignCounts counts the members of each wave by where they are,
	// and the campaign's members in all.
	CampaignCounts(ctx context.Context, id string) ([]WaveCount, int, error)
	// CampaignMembers lists members in draw order: of one wave, or (wave
	// -1) those not in a wave yet.
	CampaignMembers(ctx context.Context, id string, wave int) ([]CampaignMember, error)
	// CampaignMembership lists the campaigns a vehicle's ECUs belong to.
	CampaignMembership(ctx context.Context, vin string) ([]CampaignMember, error)
	CampaignJobs(ctx context.Context, id, state string) ([]Job, error)
	// CampaignTargets lists the images campaigns cover; CampaignHolds the
	// vehicle's ECU serials that a running or paused campaign holds
	// (members still waiting for their job), which auto-assign leaves alone.
	CampaignTargets(ctx context.Context) (map[string]bool, error)
	CampaignHolds(ctx context.Context, vin string) (map[string]bool, error)
}

// Rollouts are what the campaign engine writes as it runs a campaign;
// writes that depend on leadership are fenced.
type Rollouts interface {
	CampaignCandidates(ctx context.Context, ecuType string, hardwareIDs []string, sel Selector) ([]CampaignCandidate, error)
	StartCampaign(ctx context.Context, id string, members []CampaignMember, at time.Time) error
	AddCampaignMember(ctx context.Context, m CampaignMember) error
	CampaignMembersToAssign(ctx context.Context, id string, openWaves, limit int) ([]CampaignMember, error)
	OpenCampaignWave(ctx context.Context, f Fence, id string, wave, take int, askConsent bool, at time.Time) error
	AssignCampaignJobs(ctx context.Context, f Fence, id string, jobs []Job, clock, at time.Time) ([]Job, error)
	EndCampaign(ctx context.Context, f Fence, id, to, reason string, at time.Time) error
	SetCampaignConsent(ctx context.Context, id, vin, decision string) error
}

// Leases let replicas take turns at singleton work. There is one kind:
// a named lease with an epoch that grows each time it changes hands, so
// writes fenced by an older epoch fail (Fence).
type Leases interface {
	// AcquireLeadership takes the named lease if it is free or expired,
	// or renews it for its holder, and returns its epoch; false if
	// another holder has it.
	AcquireLeadership(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (epoch int64, ok bool, err error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Fence names the lease a leader's write depends on: the write happens
// only if the lease is still held by Holder at Epoch (and unexpired), so
// a replica that stalled past its lease cannot act on stale leadership.
type Fence struct {
	Name, Holder string
	Epoch        int64
}

// ErrFenced: the write's lease has passed to another holder or expired.
var ErrFenced = errors.New("fenced: the lease is no longer held")

// Campaign states.
const (
	CampaignDraft     = "draft"
	CampaignRunning   = "running"
	CampaignPaused    = "paused"
	CampaignHalted    = "halted"
	CampaignCompleted = "completed"
	CampaignAborted   = "aborted"
)

// Selector picks a campaign's vehicles; an empty list matches all.
type Selector struct {
	Models      []string `json:"models"`
	Years       []int    `json:"years"`
	Regions     []string `json:"regions"`
	HardwareIDs []string `json:"hardwareIds"`
	VINs        []string `json:"vins"`
}

// CampaignConfig is what a campaign was created with; it never changes.
type CampaignConfig struct {
	ECU              string        `json:"ecu"`
	Version          string        `json:"version"`
	Selector         Selector      `json:"selector"`
	IncludeNew       bool          `json:"includeNew"`
	Waves            []int         `json:"waves"`
	MinSamples       int           `json:"minSamples"`
	SuccessThreshold float64       `json:"successThreshold"`
	FailureThreshold float64       `json:"failureThreshold"`
	Soak             time.Duration `json:"soak"`
	MaxPerMinute     int           `json:"maxPerMinute"`
	Consent          string        `json:"consent"`
	Window           *Window       `json:"window,omitempty"`
	// Targets is the image for each hardware ID (ECU type and version
	// resolved when the campaign was created).
	Targets map[string]string `json:"targets"`
	// With, for an update set, are the other ECUs each member vehicle
	// installs together with ECU (one job for the set, all or none).
	With []CampaignPart `json:"with,omitempty"`
	// Deltas is wait, prefer or off ("": prefer): whether a member's job
	// waits for the delta from what it runs, uses one when made, or
	// always gets the full image.
	Deltas string `json:"deltas,omitempty"`
}

// CampaignPart is one more ECU of a campaign's update set.
type CampaignPart struct {
	ECU     string `json:"ecu"`
	Version string `json:"version"`
	// Targets is the image for each hardware ID.
	Targets map[string]string `json:"targets"`
}

// Campaign is a staged rollout of one image.
type Campaign struct {
	ID         string
	Name       string
	State      string
	HaltReason string
	Config     CampaignConfig
	// Seed orders the members (stable random draw).
	Seed int64
	// OpenWaves is how many waves have opened; WaveOpened when each did.
	OpenWaves  int
	WaveOpened []time.Time
	CreatedBy  string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	StartedAt  time.Time
	// AssignClock paces assignments (maxPerMinute): each assignment moves
	// it on by 60s/maxPerMinute, never past now.
	AssignClock time.Time
}

// CampaignMember is one ECU a campaign covers.
type CampaignMember struct {
	CampaignID string
	VIN        string
	ECUSerial  string
	// Draw is the member's place in the campaign's random order.
	Draw int64
	// Wave is the index of the wave it belongs to (-1: none open yet).
	Wave     int
	JobID    string
	Consent  string // "" (not asked), pending, accepted, declined
	JoinedAt time.Time
}

// CampaignCandidate is an ECU a campaign's selector matches, with what it
// runs.
type CampaignCandidate struct {
	VIN, ECUSerial, HardwareID string
	Installed                  string // the installed target path ("" before its first report)
}

// WaveCount counts one wave's members by where they are.
type WaveCount struct {
	Wave       int `json:"-"`
	Targeted   int `json:"targeted"`
	Declined   int `json:"declined"`
	Waiting    int `json:"waiting"` // not assigned yet (rate cap, consent)
	Queued     int `json:"queued"`
	InProgress int `json:"inProgress"`
	Succeeded  int `json:"succeeded"`
	Failed     int `json:"failed"`
	RolledBack int `json:"rolledBack"`
	TimedOut   int `json:"timedOut"`
	Canceled   int `json:"canceled"`
}

// AuditCheckpoint is a signed statement of the chain's head.
type AuditCheckpoint struct {
	Seq       int64     `json:"seq"`
	Hash      string    `json:"hash"`
	At        time.Time `json:"at"`
	KeyID     string    `json:"keyId"`
	Signature string    `json:"signature"` // hex ed25519 over Message()
}

// Message is what a checkpoint's signature covers.
func (c AuditCheckpoint) Message() []byte {
	return []byte("roadsign-audit-checkpoint:" + strconv.FormatInt(c.Seq, 10) + ":" + c.Hash + ":" + strconv.FormatInt(c.At.UnixMicro(), 10))
}
