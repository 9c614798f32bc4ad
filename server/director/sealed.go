package director

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/repo"
)

// Sealer is the image repository as encrypted images need it.
type Sealer interface {
	// Encrypts reports whether images for any of hardwareIDs are kept
	// only sealed.
	Encrypts(hardwareIDs []string) bool
	// Sealed returns an image's sealed form and file key (ok false: not
	// kept sealed).
	Sealed(ctx context.Context, plainSHA string) (img repo.SealedImage, fileKey []byte, ok bool, err error)
	// Delta resolves a delta's target (the deltas role).
	Delta(ctx context.Context, path string) (*metadata.TargetFiles, bool, error)
}

// EncryptedTarget tells one ECU where the sealed form of its image is and
// gives it the file key, wrapped with HPKE to that ECU's encryption key
// and bound to the VIN, its serial, the target path and the sealed file's
// sha256. The director's signature covers all of it; the target's own
// hashes stay those of the plaintext, which the ECU checks in the end.
type EncryptedTarget struct {
	// Sealed is the file's name under /repo/sealed/ (and a USB bundle's
	// targets/sealed/).
	Sealed string `json:"sealed"`
	SHA256 string `json:"sha256"`
	Length int64  `json:"length"`
	// Header is the sealed file's header (hex): a download resumes
	// without fetching it again.
	Header string `json:"header"`
	// Recipient names the ECU encryption key the file key is wrapped
	// to (hex sha256 of it, first 16 bytes).
	Recipient string `json:"recipient"`
	// Key is the wrapped file key (base64), filled in when signing.
	Key string `json:"key,omitempty"`
	// Delta is the sealed form of the delta the ECU is offered, if any.
	Delta *EncryptedTarget `json:"delta,omitempty"`

	fileKey []byte
}

// withSealed gives each install of hardware whose images are kept sealed
// its sealed image (and delta). An ECU without a registered encryption
// key, or an image not yet sealed, gets nothing this time: an image of
// that hardware is never sent in clear.
func (d *Service) withSealed(ctx context.Context, v server.Vehicle, as []Assigned) ([]Assigned, error) {
	if d.sealer == nil {
		return as, nil
	}
	keys := map[string][]byte{}
	for _, e := range v.ECUs {
		keys[e.Serial] = e.EncryptionKey
	}
	kept := as[:0:0]
	for _, a := range as {
		if !d.sealer.Encrypts([]string{a.HardwareID}) {
			kept = append(kept, a)
			continue
		}
		if len(keys[a.Serial]) == 0 {
			d.log.Warn("not assigning an encrypted image: the ECU has no encryption key yet (its next check-in reports it)", "vin", v.VIN, "ecu", a.Serial, "target", a.Path)
			continue
		}
		et, ok, err := d.sealedTarget(ctx, a.Target)
		if err != nil {
			return nil, err
		}
		if !ok {
			d.log.Warn("not assigning an image of encrypted hardware that is not sealed yet (publish it again)", "vin", v.VIN, "ecu", a.Serial, "target", a.Path)
			continue
		}
		a.Encrypted, a.EncryptionKey = et, keys[a.Serial]
		et.Recipient = Recipient(keys[a.Serial])
		if a.Delta != "" {
			dtf, found, err := d.sealer.Delta(ctx, a.Delta)
			if err != nil {
				return nil, err
			}
			if det, ok, err := d.sealedTarget(ctx, dtf); err != nil {
				return nil, err
			} else if found && ok {
				det.Recipient = et.Recipient
				a.Encrypted.Delta = det
			} else {
				a.Delta = "" // a delta in clear is not sent either
			}
		}
		kept = append(kept, a)
	}
	return kept, nil
}

func (d *Service) sealedTarget(ctx context.Context, tf *metadata.TargetFiles) (*EncryptedTarget, bool, error) {
	if tf == nil {
		return nil, false, nil
	}
	img, fk, ok, err := d.sealer.Sealed(ctx, hex.EncodeToString(tf.Hashes["sha256"]))
	if err != nil || !ok {
		return nil, false, err
	}
	return &EncryptedTarget{Sealed: img.Name, SHA256: img.SHA256, Length: img.Length, Header: img.Header, fileKey: fk}, true, nil
}

// wrap fills in the wrapped file keys of a's encrypted target.
func wrap(vin string, a Assigned, et *EncryptedTarget) (*EncryptedTarget, error) {
	out := *et
	w, err := sealed.WrapKey(a.EncryptionKey, et.fileKey, sealed.Binding{VIN: vin, Serial: a.Serial, Target: a.Path, SealedSHA256: et.SHA256})
	if err != nil {
		return nil, fmt.Errorf("wrap the file key of %s for %s: %w", a.Path, a.Serial, err)
	}
	out.Key = base64.StdEncoding.EncodeToString(w)
	if et.Delta != nil {
		dw, err := sealed.WrapKey(a.EncryptionKey, et.Delta.fileKey, sealed.Binding{VIN: vin, Serial: a.Serial, Target: a.Delta, SealedSHA256: et.Delta.SHA256})
		if err != nil {
			return nil, fmt.Errorf("wrap the file key of %s for %s: %w", a.Delta, a.Serial, err)
		}
		dt := *et.Delta
		dt.Key = base64.StdEncoding.EncodeToString(dw)
		out.Delta = &dt
	}
	return &out, nil
}

// Recipient names an ECU encryption key: hex sha256, first 16 bytes.
func Recipient(pub []byte) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}
