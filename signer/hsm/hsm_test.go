//go:build cgo

package hsm_test

import (
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/testsupport"
	"github.com/roadsign/roadsign/signer/hsm"
)

// TestKeysOnAToken: a key made on a token signs TUF metadata that its
// public key verifies; the same label is not made twice; a missing key
// and an unusable URI are refused with what to do.
func TestKeysOnAToken(t *testing.T) {
	query := testsupport.SoftHSM(t)
	ref := "pkcs11:token=roadsign;object=release" + query
	k, err := hsm.Generate(ref)
	if err != nil {
		t.Fatal(err)
	}
	id := k.ID
	k.Close()
	if _, err := hsm.Generate(ref); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Fatalf("a second key of the same label: %v", err)
	}
	k, err = hsm.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if k.ID != id || k.Public.Type != "ecdsa" {
		t.Fatalf("opened %s (%s), made %s", k.ID, k.Public.Type, id)
	}
	tm := metadata.Targets(meta.Expires(testsupport.Epoch, 24*3600e9))
	if err := meta.Sign(tm, k); err != nil {
		t.Fatal(err)
	}
	root := metadata.Root(meta.Expires(testsupport.Epoch, 24*3600e9))
	if err := root.Signed.AddKey(k.Public, metadata.TARGETS); err != nil {
		t.Fatal(err)
	}
	root.Signed.Roles[metadata.TARGETS].Threshold = 1
	if err := root.VerifyDelegate(metadata.TARGETS, tm); err != nil {
		t.Fatalf("the token's signature does not verify: %v", err)
	}
	refusals := []struct {
		ref, says string
	}{
		{"pkcs11:token=roadsign;object=absent" + query, "keygen"},
		{"pkcs11:token=other;object=release" + query, "other"},
		{"pkcs11:object=release", "module-path"},
		{"file:release", "pkcs11"},
	}
	for _, r := range refusals {
		if _, err := hsm.Open(r.ref); err == nil || !strings.Contains(err.Error(), r.says) {
			t.Errorf("Open(%s): %v, want an error saying %q", r.ref, err, r.says)
		}
	}
	if _, err := hsm.Generate("pkcs11:token=roadsign" + query); err == nil || !strings.Contains(err.Error(), "object=") {
		t.Errorf("keygen without a label: %v", err)
	}
}
