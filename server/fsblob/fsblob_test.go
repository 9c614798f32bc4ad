package fsblob_test

import (
	"testing"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/blobtest"
	"github.com/roadsign/roadsign/server/fsblob"
)

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) server.BlobStore {
		s, err := fsblob.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
