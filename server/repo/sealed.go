package repo

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/server"
)

// Images for the hardware IDs given with --encrypt-hardware-id are kept
// only sealed (internal/sealed): one ciphertext per image, under a random
// file key, at repo/sealed/SHA256.PREFIX (served at /repo/sealed/...),
// never in clear. The file key is kept wrapped under the key-encryption
// key (keys/file-kek.key, in the key store with the online keys, never in
// the database) in a record beside it, sealed-keys/SHA256.json, which is
// not served. The director wraps it again for each ECU it assigns the
// image to.

const (
	sealedPrefix    = imagePrefix + "sealed/"
	sealedKeyPrefix = "sealed-keys/"
	kekFile         = "file-kek.key"
)

// SealedImage describes the sealed form of an image.
type SealedImage struct {
	// Name is the sealed file under /repo/sealed/.
	Name string `json:"name"`
	// SHA256 and Length are the sealed file's.
	SHA256 string `json:"sha256"`
	Length int64  `json:"length"`
	// Header is the sealed file's header, hex (its nonce prefix and chunk
	// size), so a download can resume without it.
	Header      string `json:"header"`
	PlainSHA256 string `json:"plainSha256"`
	PlainLength int64  `json:"plainLength"`
	// Key is the file key sealed under the key-encryption key.
	Key string `json:"key"`
}

// sealer keeps images sealed.
type sealer struct {
	blobs   server.BlobStore
	kek     cipher.AEAD
	encrypt []string
	mu      sync.Mutex
	known   map[string]SealedImage
}

// LoadKEK reads the key-encryption key from dataDir/keys, making it on
// first use (0600, beside the online keys).
func LoadKEK(dataDir string) ([]byte, error) {
	p := filepath.Join(dataDir, "keys", kekFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		k := sealed.NewFileKey()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(p, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
		return k, nil
	}
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != sealed.KeySize {
		return nil, fmt.Errorf("%s is not a base64 32-byte key; restore it from backup (without it no sealed image can be sent)", p)
	}
	return k, nil
}

func newSealer(blobs server.BlobStore, kek []byte, encrypt []string) (*sealer, error) {
	if len(encrypt) == 0 {
		return nil, nil
	}
	if len(kek) != sealed.KeySize {
		return nil, errors.New("encrypted images need the key-encryption key (repo.LoadKEK)")
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &sealer{blobs: blobs, kek: a, encrypt: encrypt, known: map[string]SealedImage{}}, nil
}

// Encrypts reports whether images for any of hardwareIDs are kept sealed.
func (r *Repo) Encrypts(hardwareIDs []string) bool {
	if r.sealer == nil {
		return false
	}
	for _, id := range hardwareIDs {
		if slices.Contains(r.sealer.encrypt, id) {
			return true
		}
	}
	return false
}

func kekAD(s SealedImage) []byte {
	return []byte("roadsign file key under kek v1|" + s.PlainSHA256 + "|" + s.SHA256)
}

// seal stores the sealed form of size plaintext bytes read from body,
// which must hash to plainSHA (hex); nothing is stored otherwise.
func (s *sealer) seal(ctx context.Context, plainSHA string, body io.Reader, size int64) (SealedImage, error) {
	want, _ := hex.DecodeString(plainSHA)
	fileKey := sealed.NewFileKey()
	pr, pw := io.Pipe()
	vr := &verifyingReader{r: body, h: sha256.New(), want: want, size: size}
	hdr := &headerTap{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := sealed.Seal(io.MultiWriter(pw, hdr), vr, fileKey, sealed.DefaultChunk)
		pw.CloseWithError(err)
	}()
	sealedSize := sealed.SealedSize(size, sealed.DefaultChunk)
	h := sha256.New()
	// A random name part: two replicas sealing the same image at once
	// write two valid files, each with its own record.
	name := fmt.Sprintf("%s.%s", plainSHA, hex.EncodeToString(sealedNamePart()))
	err := s.blobs.Put(ctx, sealedPrefix+name, io.TeeReader(pr, h), sealedSize)
	pr.CloseWithError(err)
	<-done
	if err != nil {
		if vr.mismatch {
			return SealedImage{}, fmt.Errorf("%w: content sha256 is %s, not %s; nothing stored", errHashMismatch, hex.EncodeToString(vr.h.Sum(nil)), plainSHA)
		}
		return SealedImage{}, fmt.Errorf("store sealed image %s: %w", plainSHA, err)
	}
	img := SealedImage{Name: name, SHA256: hex.EncodeToString(h.Sum(nil)), Length: sealedSize, Header: hex.EncodeToString(hdr.b),
		PlainSHA256: plainSHA, PlainLength: size}
	nonce := make([]byte, s.kek.NonceSize())
	rand.Read(nonce)
	img.Key = base64.StdEncoding.EncodeToString(s.kek.Seal(nonce, nonce, fileKey, kekAD(img)))
	rec, err := json.Marshal(img)
	if err != nil {
		return SealedImage{}, err
	}
	if err := server.PutBytes(ctx, s.blobs, sealedKeyPrefix+plainSHA+".json", rec); err != nil {
		return SealedImage{}, fmt.Errorf("store the sealed image's key record: %w", err)
	}
	s.mu.Lock()
	s.known[plainSHA] = img
	s.mu.Unlock()
	return img, nil
}

var errHashMismatch = errors.New("hash mismatch")

func sealedNamePart() []byte {
	b := make([]byte, 8)
	rand.Read(b)
	return b
}

// headerTap keeps the first bytes written through it: the sealed header.
type headerTap struct{ b []byte }

func (t *headerTap) Write(p []byte) (int, error) {
	if k := sealed.HeaderSize - len(t.b); k > 0 {
		t.b = append(t.b, p[:min(k, len(p))]...)
	}
	return len(p), nil
}

// lookup returns the record of plainSHA's sealed form (ok false: none).
func (s *sealer) lookup(ctx context.Context, plainSHA string) (SealedImage, bool, error) {
	s.mu.Lock()
	img, ok := s.known[plainSHA]
	s.mu.Unlock()
	if ok {
		return img, true, nil
	}
	raw, err := server.ReadBlob(ctx, s.blobs, sealedKeyPrefix+plainSHA+".json", 1<<16)
	if errors.Is(err, server.ErrBlobNotFound) {
		return SealedImage{}, false, nil
	}
	if err != nil {
		return SealedImage{}, false, err
	}
	if err := json.Unmarshal(raw, &img); err != nil || img.PlainSHA256 != plainSHA {
		return SealedImage{}, false, fmt.Errorf("sealed image record %s is damaged", plainSHA)
	}
	s.mu.Lock()
	s.known[plainSHA] = img
	s.mu.Unlock()
	return img, true, nil
}

// fileKey unwraps img's file key.
func (s *sealer) fileKey(img SealedImage) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(img.Key)
	n := s.kek.NonceSize()
	if err != nil || len(b) < n {
		return nil, fmt.Errorf("sealed image %s: damaged key record", img.PlainSHA256)
	}
	k, err := s.kek.Open(nil, b[:n], b[n:], kekAD(img))
	if err != nil {
		return nil, fmt.Errorf("sealed image %s: its file key does not open with this server's key-encryption key (keys/%s)", img.PlainSHA256, kekFile)
	}
	return k, nil
}

// Sealed returns the sealed form of the image whose sha256 is plainSHA
// (hex) and its file key; ok is false when it is not kept sealed.
func (r *Repo) Sealed(ctx context.Context, plainSHA string) (img SealedImage, fileKey []byte, ok bool, err error) {
	if r.sealer == nil {
		return SealedImage{}, nil, false, nil
	}
	img, ok, err = r.sealer.lookup(ctx, plainSHA)
	if err != nil || !ok {
		return img, nil, ok, err
	}
	fileKey, err = r.sealer.fileKey(img)
	return img, fileKey, err == nil, err
}

// OpenPlain opens an image by its sha256 (hex) in clear, from its sealed
// form when it is kept sealed (the server's own use: making deltas).
func (r *Repo) OpenPlain(ctx context.Context, key, plainSHA string) (io.ReadCloser, error) {
	img, fk, ok, err := r.Sealed(ctx, plainSHA)
	if err != nil {
		return nil, err
	}
	if !ok {
		rc, _, err := r.blobs.Open(ctx, key)
		return rc, err
	}
	rc, _, err := r.blobs.Open(ctx, sealedPrefix+img.Name)
	if err != nil {
		return nil, err
	}
	sr, err := sealed.NewReader(rc, fk)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{sr, rc}, nil
}

// sealStored seals a target stored in clear (uploaded before its
// hardware was encrypted, or by a signer that did not say) and removes
// the clear copy.
func (r *Repo) sealStored(ctx context.Context, key, plainSHA string, size int64) error {
	if _, ok, err := r.sealer.lookup(ctx, plainSHA); err != nil || ok {
		if ok {
			return r.blobs.Delete(ctx, key)
		}
		return err
	}
	rc, info, err := r.blobs.Open(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	if info.Size != size {
		return server.Errorf(server.KindConflict, "target %s is stored with %d bytes, metadata says %d", key, info.Size, size)
	}
	if _, err := r.sealer.seal(ctx, plainSHA, rc, size); err != nil {
		return err
	}
	r.log.Info("sealed a target stored in clear and removed the clear copy", "blob", key)
	return r.blobs.Delete(ctx, key)
}

var sealedNameRE = regexp.MustCompile(`^sealed/[0-9a-f]{64}\.[0-9a-f]{16}$`)

// SealedTarget reports whether name (a path under /repo/) is a target
// kept only sealed, and its plaintext length: it is not served in clear.
func (r *Repo) SealedTarget(ctx context.Context, name string) (int64, bool, error) {
	if r.sealer == nil || !strings.HasPrefix(name, "targets/") {
		return 0, false, nil
	}
	m := targetFileRE.FindStringSubmatch(name[strings.LastIndex(name, "/")+1:])
	if m == nil {
		return 0, false, nil
	}
	img, ok, err := r.sealer.lookup(ctx, m[1])
	return img.PlainLength, ok, err
}

// checkSealed makes sure target p (blob key in clear) of hardware whose
// images are kept sealed is stored sealed, with its signed length, and
// not in clear.
func (r *Repo) checkSealed(ctx context.Context, p, key string, tf *metadata.TargetFiles) error {
	plainSHA := hex.EncodeToString(tf.Hashes["sha256"])
	img, ok, err := r.sealer.lookup(ctx, plainSHA)
	if err != nil {
		return err
	}
	if !ok {
		err := r.sealStored(ctx, key, plainSHA, tf.Length)
		if errors.Is(err, server.ErrBlobNotFound) {
			return server.Errorf(server.KindConflict, "target %s has not been uploaded; upload it before publishing metadata that lists it", p)
		}
		return err
	}
	if img.PlainLength != tf.Length {
		return server.Errorf(server.KindConflict, "target %s is stored sealed from %d bytes, metadata says %d", p, img.PlainLength, tf.Length)
	}
	// A clear copy uploaded before its hardware was encrypted goes.
	return r.blobs.Delete(ctx, key)
}

// SealPublished seals the published images of encrypted hardware that
// are still stored in clear (published before their hardware was
// encrypted) and removes the clear copies. Every replica may run it at
// start: sealing twice leaves two valid sealed files.
func (r *Repo) SealPublished(ctx context.Context) error {
	if r.sealer == nil {
		return nil
	}
	targets, _, err := r.CurrentTargets(ctx)
	if err != nil {
		return err
	}
	for p, tf := range targets {
		c, err := meta.TargetCustom(tf)
		if err != nil || !r.Encrypts(c.HardwareIDs) {
			continue
		}
		key, err := TargetKey(p, tf)
		if err != nil {
			return err
		}
		if err := r.sealStored(ctx, key, hex.EncodeToString(tf.Hashes["sha256"]), tf.Length); err != nil && !errors.Is(err, server.ErrBlobNotFound) {
			return fmt.Errorf("seal %s: %w", p, err)
		}
	}
	return nil
}
