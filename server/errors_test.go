package server_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/roadsign/roadsign/server"
)

func TestErrorKindsMatchTheStoreSentinels(t *testing.T) {
	tests := []struct {
		name               string
		err                error
		notFound, conflict bool
		kind               server.Kind
	}{
		{"sentinel not found", server.ErrNotFound, true, false, server.KindNotFound},
		{"wrapped sentinel", fmt.Errorf("job 7: %w", server.ErrConflict), false, true, server.KindConflict},
		{"service not found", server.Errorf(server.KindNotFound, "no campaign %s", "c"), true, false, server.KindNotFound},
		{"no vehicle", server.NoVehicle("VIN1"), true, false, server.KindNotFound},
		{"coded conflict", server.CodedErrorf(server.KindConflict, "job_canceled", "canceled"), false, true, server.KindConflict},
		{"invalid", server.Errorf(server.KindInvalid, "bad"), false, false, server.KindInvalid},
		{"plain error", errors.New("disk on fire"), false, false, server.KindInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(tt.err, server.ErrNotFound); got != tt.notFound {
				t.Errorf("Is(ErrNotFound) = %v", got)
			}
			if got := errors.Is(tt.err, server.ErrConflict); got != tt.conflict {
				t.Errorf("Is(ErrConflict) = %v", got)
			}
			if got := server.ErrorOf(tt.err); got.Kind != tt.kind {
				t.Errorf("ErrorOf kind = %v, want %v", got.Kind, tt.kind)
			}
		})
	}
	if msg := server.ErrorOf(errors.New("disk on fire")).Message; msg == "disk on fire" {
		t.Error("an internal error's text reached the caller")
	}
}
