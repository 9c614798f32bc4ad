// Package keys creates, stores and loads ed25519 signing keys as PKCS#8 PEM
// files readable only by their owner.
package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/atomicfile"
)

// ErrInsecure is returned for a key file that others can read or write.
var ErrInsecure = errors.New("key file is accessible by others")

// Key is a loaded signing key.
type Key struct {
	// ID is the TUF key ID (sha256 of the canonical public key).
	ID     string
	Public *metadata.Key
	Signer signature.Signer
	// Private is the raw key, for signing that is not TUF metadata.
	Private ed25519.PrivateKey
	// Path is the key file, or the PKCS#11 URI of a key on a token.
	Path string
	// Release, if set, frees what the key holds open (a token session).
	Release func()
}

// Close releases what the key holds open; a file key holds nothing.
func (k *Key) Close() {
	if k != nil && k.Release != nil {
		k.Release()
	}
}

// Generate creates a new ed25519 key and writes it to path with mode 0600.
// It refuses to overwrite an existing file.
func Generate(path string) (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("key file %s already exists; refusing to overwrite it", path)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return nil, err
	}
	return fromPrivate(priv, path)
}

// Load reads a key written by Generate. It refuses a file whose mode lets
// group or others read or write it, as ssh does.
func Load(path string) (*Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrInsecure, path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("load key %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load key %s: not an ed25519 key", path)
	}
	return fromPrivate(priv, path)
}

func fromPrivate(priv ed25519.PrivateKey, path string) (*Key, error) {
	s, err := signature.LoadED25519Signer(priv)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	pub, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	id, err := pub.ID()
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	return &Key{ID: id, Public: pub, Signer: s, Private: priv, Path: path}, nil
}

// WritePublic writes a TUF public key (keytype, scheme, keyval) as JSON,
// the form key holders hand to whoever runs roadsign-signer init.
func WritePublic(path string, k *metadata.Key) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("public key file %s already exists; refusing to overwrite it", path)
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// LoadPublic reads a public key written by WritePublic.
func LoadPublic(path string) (*metadata.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	var k metadata.Key
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("public key %s: not a TUF public key (JSON with keytype, scheme, keyval): %w", path, err)
	}
	if _, err := k.ToPublicKey(); err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return &k, nil
}
