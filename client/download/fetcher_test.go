package download

import (
	"errors"
	"fmt"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func TestErrorClasses(t *testing.T) {
	tests := []struct {
		err                   error
		unreachable, notFound bool
	}{
		{&metadata.ErrDownloadHTTP{StatusCode: 503}, true, false},
		{&metadata.ErrDownloadHTTP{StatusCode: 502}, true, false},
		{&metadata.ErrDownloadHTTP{StatusCode: 404}, false, true},
		{&metadata.ErrDownloadHTTP{StatusCode: 403}, false, false},
		{fmt.Errorf("wrapped: %w", &metadata.ErrDownload{Msg: "connection refused"}), true, false},
		{&metadata.ErrUnsignedMetadata{Msg: "bad"}, false, false},
		{errors.New("other"), false, false},
	}
	for _, tt := range tests {
		if got := IsUnreachable(tt.err); got != tt.unreachable {
			t.Errorf("IsUnreachable(%v) = %v", tt.err, got)
		}
		if got := IsNotFound(tt.err); got != tt.notFound {
			t.Errorf("IsNotFound(%v) = %v", tt.err, got)
		}
	}
}
