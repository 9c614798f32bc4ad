package agent

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/bootctl"
	"github.com/roadsign/roadsign/internal/sealed"
)

// encryptedTarget is the director's word on an ECU's encrypted image:
// where its sealed form is, and the file key wrapped for this ECU alone
// (server/director.EncryptedTarget).
type encryptedTarget struct {
	Sealed    string           `json:"sealed"`
	SHA256    string           `json:"sha256"`
	Length    int64            `json:"length"`
	Header    string           `json:"header"`
	Recipient string           `json:"recipient"`
	Key       string           `json:"key"`
	Delta     *encryptedTarget `json:"delta"`
}

// sealedFile is a sealed file this ECU can open: the signed description
// and the unwrapped file key.
type sealedFile struct {
	name   string
	sha256 []byte
	length int64
	header []byte
	// chunk is the plaintext chunk size its header gives.
	chunk int
	key   []byte
}

// openSealed unwraps the file key of et, wrapped for ECU serial's
// encryption key and bound to this VIN, the serial, target path and the
// sealed file's sha256.
func (a *Agent) openSealed(serial, path string, et *encryptedTarget) (*sealedFile, error) {
	sum, err1 := hex.DecodeString(et.SHA256)
	hdr, err2 := hex.DecodeString(et.Header)
	wrapped, err3 := base64.StdEncoding.DecodeString(et.Key)
	h, err4 := sealed.ParseHeader(hdr)
	if err := errors.Join(err1, err2, err3, err4); err != nil || len(sum) != 32 || len(hdr) != sealed.HeaderSize || et.Sealed == "" {
		return nil, fmt.Errorf("the encrypted target %s for ECU %s is malformed", path, serial)
	}
	priv, err := a.V.EncryptionKey(serial)
	if err != nil {
		return nil, err
	}
	key, err := sealed.UnwrapKey(priv, wrapped, sealed.Binding{VIN: a.V.VIN, Serial: serial, Target: path, SealedSHA256: et.SHA256})
	if err != nil {
		return nil, fmt.Errorf("the file key of %s does not open with ECU %s's encryption key (%v): it was wrapped for another unit, VIN or file", path, serial, err)
	}
	return &sealedFile{name: et.Sealed, sha256: sum, length: et.Length, header: hdr, chunk: h.Chunk, key: key}, nil
}

// target is the download of the sealed file.
func (s *sealedFile) target(delta bool) Target {
	return Target{Path: s.name, SHA256: hex.EncodeToString(s.sha256), Length: s.length, Delta: delta, Sealed: true}
}

// decrypter opens s into w (the slot), resuming after the offset
// plaintext bytes the slot holds (read back from slotPath to carry the
// sealed file's sha256 on); it returns the sealed offset to download from.
func (s *sealedFile) decrypter(w io.Writer, plainLength, offset int64, slotPath string) (*sealed.Decrypter, int64, error) {
	d, err := sealed.NewDecrypter(s.key, s.header, s.length, s.sha256, plainLength, w)
	if err != nil {
		return nil, 0, err
	}
	if offset == 0 {
		return d, 0, nil
	}
	f, err := os.Open(slotPath)
	if err != nil {
		d.Stop()
		return nil, 0, err
	}
	defer f.Close()
	from, err := d.Resume(f, offset)
	if err != nil {
		d.Stop()
		return nil, 0, err
	}
	return d, from, nil
}

// sealedRefusal is the error for a sealed download that did not
// authenticate: the slot was wiped and nothing is installed.
func sealedRefusal(path string, err error) error {
	return fmt.Errorf("%w: encrypted image %s: %v; nothing was written to the slot from the failing chunk on, the slot is wiped and nothing installed", client.ErrRefused, path, err)
}

// fetchSealed streams the sealed image of p into the ECU's inactive
// slot, each chunk authenticated before it is written. A download
// resumes on a chunk boundary.
func (a *Agent) fetchSealed(ctx context.Context, src Source, p *plan, sum string) (int64, error) {
	ecu := p.boot.(*bootctl.ECU)
	w, err := ecu.Begin(p.journal(sum))
	if err != nil {
		return 0, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
	}
	if w.Offset()%int64(p.sealed.chunk) != 0 {
		// Not on a chunk boundary (an older agent's progress): start over.
		w.Pause()
		if err := ecu.Abort(); err != nil {
			return 0, err
		}
		if w, err = ecu.Begin(p.journal(sum)); err != nil {
			return 0, fmt.Errorf("ECU %s: %w", p.ecu.Serial, err)
		}
	}
	w.WriteHook = a.Faults.WriteHook(p.tf.Length)
	p.w = w
	d, from, err := p.sealed.decrypter(w, p.tf.Length, w.Offset(), ecu.SlotPath(w.Journal().Slot))
	if err != nil {
		w.Pause()
		p.boot.Abort()
		return 0, sealedRefusal(p.path, err)
	}
	if from > 0 {
		a.Log.Info("resuming encrypted download", "target", p.path, "offset", w.Offset(), "sealed_offset", from)
	}
	res, canceled, err := a.stream(ctx, src, p, p.sealed.target(false), d, from, "downloading "+p.path+" (encrypted)", "downloading "+p.path+" (encrypted)")
	err = finishSealed(d, canceled, err)
	n := res.Transferred
	if errors.Is(err, sealed.ErrAuth) {
		w.Pause()
		p.boot.Abort()
		return n, sealedRefusal(p.path, err)
	}
	if err := a.afterStream(p, w, canceled, err); err != nil {
		return n, err
	}
	a.Log.Info("downloaded and decrypted", "target", p.path, "sealed_bytes", n, "attempts", res.Attempts)
	a.say("verifying %s: decrypted, length and sha256 against signed metadata", p.path)
	return n, w.Finish(a.Faults.Hooks())
}

// finishSealed ends a sealed download into d: after a complete one, the
// sealed file must have arrived whole, authenticated, at its signed
// sha256; after a failed or canceled one, d's stages are stopped (before
// the slot is paused), and a chunk that failed to authenticate is the
// error.
func finishSealed(d *sealed.Decrypter, canceled bool, err error) error {
	if err == nil && !canceled {
		return d.Finish()
	}
	if serr := d.Stop(); errors.Is(serr, sealed.ErrAuth) {
		return serr
	}
	return err
}
