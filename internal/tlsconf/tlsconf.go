// Package tlsconf builds the TLS settings Roadsign's programs share: a
// server certificate that reloads without a restart, a private CA that
// clients trust, optional client certificates for vehicles, and how to
// tell a certificate that does not verify (a security refusal) from a
// network that is down.
package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// MinVersion is the oldest protocol any Roadsign endpoint speaks.
const MinVersion = tls.VersionTLS12

// cipherSuites are the TLS 1.2 suites offered: forward secrecy and AEAD
// only (TLS 1.3's are fixed by Go and all modern).
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// CertPool reads PEM certificates (a private CA) from a file.
func CertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool, err := PoolFromPEM(b)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", file, err)
	}
	return pool, nil
}

// PoolFromPEM makes a pool of the PEM certificates in b.
func PoolFromPEM(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

// Client returns a client configuration trusting the PEM CA certificates
// in caPEM (the system's roots if empty), presenting cert (if not nil).
func Client(caPEM []byte, cert *tls.Certificate) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: MinVersion, CipherSuites: cipherSuites}
	if len(caPEM) > 0 {
		pool, err := PoolFromPEM(caPEM)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		cfg.RootCAs = pool
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg, nil
}

// ClientFile is Client with the CA certificates read from caFile ("" for
// the system's roots).
func ClientFile(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return Client(nil, nil)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	return Client(b, nil)
}

// ClientCert pairs a PEM certificate (chain) with a private key held in
// memory (a vehicle's key), checking that they belong together.
func ClientCert(b []byte, key crypto.Signer) (*tls.Certificate, error) {
	var chain [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, errors.New("client certificate: no PEM certificate in it")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	if !SameKey(leaf.PublicKey, key.Public()) {
		return nil, errors.New("client certificate is for another key than this vehicle's")
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// SameKey reports whether two public keys are equal.
func SameKey(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// Reloader holds the server's certificate and key, replaced atomically by
// Reload; connections already open keep theirs.
type Reloader struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// NewReloader loads the certificate and key.
func NewReloader(certFile, keyFile string) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile}
	return r, r.Reload()
}

// Reload reads the files again; on error the current certificate stays.
func (r *Reloader) Reload() error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	if c.Leaf == nil && len(c.Certificate) > 0 {
		c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	r.cur.Store(&c)
	return nil
}

// Leaf is the certificate being served.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().Leaf }

// Server returns the server configuration: TLS 1.2 and later, modern
// suites, HTTP/2 (net/http adds it), and, with clientCAs, client
// certificates verified when given (vehicles; browsers send none).
func (r *Reloader) Server(clientCAs *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:   MinVersion,
		CipherSuites: cipherSuites,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.cur.Load(), nil
		},
	}
	if clientCAs != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.VerifyClientCertIfGiven
	}
	return cfg
}

// IsVerifyError reports whether err is a peer certificate that does not
// verify (unknown authority, wrong name, expired), as opposed to a
// network failure.
func IsVerifyError(err error) bool {
	var (
		ve   *tls.CertificateVerificationError
		ua   x509.UnknownAuthorityError
		host x509.HostnameError
		inv  x509.CertificateInvalidError
	)
	return errors.As(err, &ve) || errors.As(err, &ua) || errors.As(err, &host) || errors.As(err, &inv)
}

// Refusal says, in one clause, why a server certificate was refused and
// what to do: caFix is how the program takes a CA (--ca-cert FILE, ...).
func Refusal(err error, caFix string) string {
	var (
		ua   x509.UnknownAuthorityError
		host x509.HostnameError
		inv  x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &host):
		return fmt.Sprintf("the server's TLS certificate is not for this address (%v): use the name or address it is issued for in the server URL", err)
	case errors.As(err, &inv):
		return fmt.Sprintf("the server's TLS certificate is not valid now (%v): renew it, or check this machine's clock", err)
	case errors.As(err, &ua):
		return fmt.Sprintf("the server's TLS certificate is not signed by a CA this program trusts (%v): %s", err, caFix)
	}
	return fmt.Sprintf("the server's TLS certificate does not verify (%v): %s", err, caFix)
}

// IsPlainToTLS reports whether an answer is Go's (and nginx's) reply to
// plain HTTP sent to an HTTPS port.
func IsPlainToTLS(status int, body []byte) bool {
	return status == 400 && (bytes.Contains(body, []byte("HTTP request to an HTTPS server")) || bytes.Contains(body, []byte("plain HTTP request was sent to HTTPS port")))
}
