// Package errcode is the API's error vocabulary: the machine-readable
// codes the server answers in {"error": {"code": ...}} and records as a
// vehicle's authorization state, shared by the server and its clients so
// that no code is compared as a string literal across the wire. docs/api.md
// lists them with their HTTP statuses.
package errcode

// Codes of each error kind when nothing more specific applies.
const (
	Internal         = "internal"
	Invalid          = "invalid"
	Unauthorized     = "unauthorized"
	Forbidden        = "forbidden"
	NotFound         = "not_found"
	Conflict         = "conflict"
	TooLarge         = "too_large"
	Unavailable      = "unavailable"
	LengthRequired   = "length_required"
	MethodNotAllowed = "method_not_allowed"
)

// Requests and their bodies.
const (
	InvalidVIN        = "invalid_vin"
	InvalidPublicKey  = "invalid_public_key"
	InvalidTransition = "invalid_transition"
	InvalidCampaign   = "invalid_campaign"
	ReservedName      = "reserved_name"
	BodyMismatch      = "body_mismatch"
	HashMismatch      = "hash_mismatch"
	TooManyEvents     = "too_many_events"
	AccountDisabled   = "account_disabled"
	// EncryptedOnly: the image is served only sealed, to its ECUs.
	EncryptedOnly = "encrypted_only"
)

// Operators: API tokens, roles and four-eyes approvals.
const (
	TokenExpired  = "token_expired"
	TokenRevoked  = "token_revoked"
	ScopeExceeded = "scope_exceeded"
	// OutsideRegion: a dealer acting on a vehicle of another region.
	OutsideRegion = "outside_region"
	// ApprovalRequired: the action needs another account's approval.
	ApprovalRequired = "approval_required"
	// OwnApproval: an account may not approve what it proposed.
	OwnApproval = "own_approval"
)

// Signed vehicle requests and check-ins.
const (
	BadSignature              = "bad_signature"
	UnknownVehicleKey         = "unknown_vehicle_key"
	ClockSkew                 = "clock_skew"
	ReplayedRequest           = "replayed_request"
	StaleManifest             = "stale_manifest"
	UnregisteredECU           = "unregistered_ecu"
	ECUReportSignature        = "ecu_report_signature"
	ECUReportReplayed         = "ecu_report_replayed"
	ECUUnknown                = "ecu_unknown"
	ECUMissing                = "ecu_missing"
	ClientCertificateRequired = "client_certificate_required"
	ClientCertificateMismatch = "client_certificate_mismatch"
)

// Fleet administration: ECU replacement, images, jobs and campaigns.
const (
	ECUTypeMismatch        = "ecu_type_mismatch"
	UnknownHardwareID      = "unknown_hardware_id"
	NoSuchImage            = "no_such_image"
	MetadataExpiresTooSoon = "metadata_expires_too_soon"
	JobCanceled            = "job_canceled"
	RequirementUnmet       = "requirement_unmet"
	CampaignEmpty          = "campaign_empty"
)

// Owners, links and subscriptions.
const (
	InvalidLinkCode       = "invalid_link_code"
	LinkedToPreviousOwner = "linked_to_previous_owner"
	SubscriptionCap       = "subscription_cap"
)

// The connected-services handshake: Authorized, or why not. A vehicle's
// recorded authorization state is one of these.
const (
	Authorized            = "authorized"
	VehicleNotLinked      = "vehicle_not_linked"
	SubscriptionExpired   = "subscription_expired"
	FirmwareNotAuthorized = "firmware_not_authorized"
	InvalidChallenge      = "invalid_challenge"
	Expired               = "expired"
)
