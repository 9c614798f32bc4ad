package director_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/repo"
)

// sealer keeps DCM-A's images sealed; only those in keys are sealed yet.
type sealer struct{ keys map[string][]byte }

func (s sealer) Encrypts(hw []string) bool { return len(hw) == 1 && hw[0] == "DCM-A" }
func (s sealer) Sealed(_ context.Context, sha string) (repo.SealedImage, []byte, bool, error) {
	k, ok := s.keys[sha]
	return repo.SealedImage{Name: sha + ".0011223344556677", SHA256: "ab" + sha[2:], Length: 2000, Header: "00", PlainSHA256: sha}, k, ok, nil
}
func (s sealer) Delta(context.Context, string) (*metadata.TargetFiles, bool, error) {
	return nil, false, nil
}

// TestEncryptedAssignment: an ECU of encrypted hardware gets its image
// only sealed, with the file key wrapped for its own encryption key and
// bound to VIN, serial, target and ciphertext; without an encryption key,
// or with an image not sealed yet, it gets nothing; others are unchanged.
// The assignment's hash leaves the (random) wrapping out but not its
// recipient.
func TestEncryptedAssignment(t *testing.T) {
	w := newWorld(t)
	fileKey := sealed.NewFileKey()
	seal := sealer{keys: map[string][]byte{sumOf(catalog["dcm-2.0.bin"]): fileKey}}
	d, err := director.New(director.Config{Store: w.store, Images: catalog, Keys: w.keys, Jobs: w.jobs, Sealer: seal,
		AutoAssign: director.AutoLatest, Expiry: 24 * time.Hour, Now: w.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	v := w.vehicle(t, map[string]string{"HU1": "hu-1.0.bin", "DCM1": "dcm-1.0.bin"})

	// No encryption key yet: the DCM waits, the head unit does not.
	if got := assigned(t, d, v, nil); got["HU1"] != "hu-2.0.bin" || got["DCM1"] != "" {
		t.Fatalf("without an encryption key: %v", got)
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.SetEncryptionKey(ctx, vin, "DCM1", priv.PublicKey().Bytes()); err != nil {
		t.Fatal(err)
	}
	v, _ = w.store.Vehicle(ctx, vin)
	as, err := d.Assignment(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	var dcm *director.Assigned
	for i := range as {
		if as[i].Serial == "DCM1" {
			dcm = &as[i]
		}
	}
	if dcm == nil || dcm.Encrypted == nil || dcm.Encrypted.Recipient != director.Recipient(priv.PublicKey().Bytes()) {
		t.Fatalf("the DCM's assignment: %+v", dcm)
	}

	// Signed metadata: the wrapped key opens with the DCM's key, for this
	// binding only; two signings wrap differently but hash the same.
	ts, err := d.Timestamp(ctx, vin, w.load)
	if err != nil || ts == nil {
		t.Fatal(err)
	}
	head, err := w.store.DirectorHead(ctx, vin)
	if err != nil {
		t.Fatal(err)
	}
	f, err := w.store.DirectorFile(ctx, vin, metadata.TARGETS, head.TargetsVersion)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := metadata.Targets().FromBytes(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	var c director.TargetCustom
	if err := json.Unmarshal(*tm.Signed.Targets["dcm-2.0.bin"].Custom, &c); err != nil {
		t.Fatal(err)
	}
	et := c.Encrypted["DCM1"]
	if et == nil || et.Key == "" {
		t.Fatalf("no wrapped key in the signed targets: %s", f.Body)
	}
	wrapped, _ := base64.StdEncoding.DecodeString(et.Key)
	b := sealed.Binding{VIN: vin, Serial: "DCM1", Target: "dcm-2.0.bin", SealedSHA256: et.SHA256}
	if k, err := sealed.UnwrapKey(priv, wrapped, b); err != nil || string(k) != string(fileKey) {
		t.Fatalf("the DCM cannot open its file key: %v", err)
	}
	b.Serial = "HU1"
	if _, err := sealed.UnwrapKey(priv, wrapped, b); !errors.Is(err, sealed.ErrNotRecipient) {
		t.Fatalf("opened for another serial: %v", err)
	}
	if _, ok := c.Encrypted["HU1"]; ok {
		t.Fatal("the head unit's image is not kept encrypted")
	}
	// Polling again signs nothing new: the random wrapping is not part
	// of what decides whether the assignment changed.
	w.now = w.now.Add(time.Minute)
	if _, err := d.Timestamp(ctx, vin, w.load); err != nil {
		t.Fatal(err)
	}
	if again, _ := w.store.DirectorHead(ctx, vin); again.TargetsVersion != head.TargetsVersion {
		t.Fatalf("re-signed an unchanged assignment: targets v%d -> v%d", head.TargetsVersion, again.TargetsVersion)
	}

	// An image not sealed yet is not sent at all.
	clear(seal.keys)
	if got := assigned(t, d, v, nil); got["DCM1"] != "" {
		t.Fatalf("an image of encrypted hardware that is not sealed: %v", got)
	}
}
