// Package server holds Roadsign's server-side domain: the error model and
// the interfaces its services depend on. Backends (file and S3 blob stores)
// and the HTTP layer live in subpackages and point inward to this one.
package server

import (
	"errors"
	"fmt"

	"github.com/roadsign/roadsign/internal/errcode"
)

// Kind classifies an Error; the HTTP layer maps each kind to one status.
type Kind int

// Error kinds.
const (
	KindInternal Kind = iota
	KindInvalid
	KindUnauthorized
	KindForbidden
	KindNotFound
	KindConflict
	KindTooLarge
	KindUnavailable
	KindLengthRequired
)

var kindCodes = map[Kind]string{
	KindInternal:       errcode.Internal,
	KindInvalid:        errcode.Invalid,
	KindUnauthorized:   errcode.Unauthorized,
	KindForbidden:      errcode.Forbidden,
	KindNotFound:       errcode.NotFound,
	KindConflict:       errcode.Conflict,
	KindTooLarge:       errcode.TooLarge,
	KindUnavailable:    errcode.Unavailable,
	KindLengthRequired: errcode.LengthRequired,
}

// Error is an error meant for the API's caller: a kind, a machine-readable
// code and a one-line message that says what is wrong and what to do.
type Error struct {
	Kind    Kind
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is makes every not-found error match ErrNotFound and every conflict
// match ErrConflict, whichever layer made it.
func (e *Error) Is(target error) bool {
	switch target {
	case error(ErrNotFound):
		return e.Kind == KindNotFound
	case error(ErrConflict):
		return e.Kind == KindConflict
	}
	return false
}

// Errorf returns an *Error of kind k whose code is the kind's default.
func Errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Code: kindCodes[k], Message: fmt.Sprintf(format, args...)}
}

// CodedErrorf returns an *Error with a specific code, e.g. "invalid_vin".
func CodedErrorf(k Kind, code, format string, args ...any) *Error {
	return &Error{Kind: k, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorOf returns the *Error in err's chain, or an internal error that
// hides err's text (internal details are logged, not shown).
func ErrorOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Kind: KindInternal, Code: kindCodes[KindInternal], Message: "internal error; see the server log"}
}
