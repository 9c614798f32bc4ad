//go:build cgo

package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/ThalesGroup/crypto11"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/keys"
)

// Supported reports whether this build can use PKCS#11 tokens.
const Supported = true

// Open finds the key pair a PKCS#11 URI names. Release the returned key
// when done (it holds a session on the token).
func Open(ref string) (*keys.Key, error) {
	u, err := ParseURI(ref)
	if err != nil {
		return nil, err
	}
	ctx, err := configure(u)
	if err != nil {
		return nil, err
	}
	// FindKeyPairs, not FindKeyPair: that one reports a missing key as an
	// error of its own words, and the user needs to hear what to do.
	found, err := ctx.FindKeyPairs(u.ID, label(u))
	if err != nil {
		ctx.Close()
		return nil, fmt.Errorf("PKCS#11 token %q: find key %q: %w", u.Token, u.Object, err)
	}
	if len(found) == 0 {
		ctx.Close()
		return nil, fmt.Errorf("PKCS#11 token %q has no key pair %q; create one with roadsign-signer keygen --out %s", u.Token, u.Object, ref)
	}
	return wrap(ctx, found[0], ref)
}

// Generate creates an ECDSA P-256 key pair on the token; the private key
// cannot be extracted. It refuses when the label is already taken.
func Generate(ref string) (*keys.Key, error) {
	u, err := ParseURI(ref)
	if err != nil {
		return nil, err
	}
	if u.Object == "" {
		return nil, fmt.Errorf("PKCS#11 URI %s: keygen needs object=LABEL", ref)
	}
	ctx, err := configure(u)
	if err != nil {
		return nil, err
	}
	if found, err := ctx.FindKeyPairs(nil, label(u)); err == nil && len(found) > 0 {
		ctx.Close()
		return nil, fmt.Errorf("PKCS#11 token %q already holds a key %q; refusing to create a second", u.Token, u.Object)
	}
	id := u.ID
	if len(id) == 0 {
		id = []byte(u.Object)
	}
	s, err := ctx.GenerateECDSAKeyPairWithLabel(id, label(u), elliptic.P256())
	if err != nil {
		ctx.Close()
		return nil, fmt.Errorf("PKCS#11 token %q: generate key %q: %w", u.Token, u.Object, err)
	}
	return wrap(ctx, s, ref)
}

func label(u URI) []byte {
	if u.Object == "" {
		return nil
	}
	return []byte(u.Object)
}

func configure(u URI) (*crypto11.Context, error) {
	ctx, err := crypto11.Configure(&crypto11.Config{Path: u.ModulePath, TokenLabel: u.Token, Pin: u.Pin})
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 token %q via %s: %w", u.Token, u.ModulePath, err)
	}
	return ctx, nil
}

func wrap(ctx *crypto11.Context, s crypto11.Signer, ref string) (*keys.Key, error) {
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		ctx.Close()
		return nil, fmt.Errorf("PKCS#11 key %s is %T; Roadsign signs with ECDSA P-256 keys on tokens", ref, s.Public())
	}
	tufKey, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		ctx.Close()
		return nil, err
	}
	id, err := tufKey.ID()
	if err != nil {
		ctx.Close()
		return nil, err
	}
	return &keys.Key{ID: id, Public: tufKey, Signer: tokenSigner{s}, Path: ref, Release: func() { ctx.Close() }}, nil
}

// tokenSigner is a sigstore signature.Signer over a key on the token:
// ECDSA over SHA-256, ASN.1 DER, as TUF's ecdsa-sha2-nistp256 expects.
type tokenSigner struct{ s crypto.Signer }

func (t tokenSigner) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return t.s.Public(), nil
}

func (t tokenSigner) SignMessage(msg io.Reader, _ ...signature.SignOption) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, msg); err != nil {
		return nil, err
	}
	return t.s.Sign(rand.Reader, h.Sum(nil), crypto.SHA256)
}
