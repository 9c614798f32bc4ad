package sealed

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/roadsign/roadsign/internal/atomicfile"
)

// A file key travels to each ECU wrapped with HPKE (RFC 9180, base mode:
// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to that ECU's
// encryption key, which is not its signing key. The HPKE info binds the
// wrapped key to one ECU and one sealed file: opened for another VIN,
// serial, target or ciphertext, it does not authenticate.

// Binding is what a wrapped file key is for.
type Binding struct {
	VIN, Serial, Target string
	// SealedSHA256 is the hex sha256 of the sealed file.
	SealedSHA256 string
}

func (b Binding) info() []byte {
	out := []byte("roadsign file key v1")
	for _, f := range []string{b.VIN, b.Serial, b.Target, b.SealedSHA256} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

func suite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.DHKEM(ecdh.X25519()), hpke.HKDFSHA256(), hpke.AES256GCM()
}

// ErrNotRecipient: the wrapped key is not for this ECU key and binding.
var ErrNotRecipient = errors.New("the file key is not wrapped for this ECU")

// WrapKey wraps fileKey for the ECU whose X25519 public key is pub.
func WrapKey(pub []byte, fileKey []byte, b Binding) ([]byte, error) {
	pk, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ECU encryption key: %w", err)
	}
	hpk, err := hpke.NewDHKEMPublicKey(pk)
	if err != nil {
		return nil, err
	}
	_, kdf, aead := suite()
	return hpke.Seal(hpk, kdf, aead, b.info(), fileKey)
}

// UnwrapKey opens a file key wrapped for priv under binding b.
func UnwrapKey(priv *ecdh.PrivateKey, wrapped []byte, b Binding) ([]byte, error) {
	hk, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	_, kdf, aead := suite()
	k, err := hpke.Open(hk, kdf, aead, b.info(), wrapped)
	if err != nil || len(k) != KeySize {
		return nil, ErrNotRecipient
	}
	return k, nil
}

// NewFileKey returns a random file key.
func NewFileKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}

// GenerateECUKey writes a new X25519 encryption key to path (0600) and
// returns it.
func GenerateECUKey(path string) (*ecdh.PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	text := "roadsign x25519 " + base64.StdEncoding.EncodeToString(k.Bytes()) + "\n"
	if err := atomicfile.Write(path, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("write encryption key: %w", err)
	}
	return k, nil
}

// LoadECUKey reads a key GenerateECUKey wrote.
func LoadECUKey(path string) (*ecdh.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(string(b)), "roadsign x25519 "))
	if err != nil {
		return nil, fmt.Errorf("encryption key %s: %w", path, err)
	}
	k, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("encryption key %s: %w", path, err)
	}
	return k, nil
}
