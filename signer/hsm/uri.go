// Package hsm signs TUF metadata with keys held in a PKCS#11 token (an
// HSM, a smart card, SoftHSM2), named by RFC 7512 URIs:
//
//	pkcs11:token=roadsign;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
//
// Keys on a token are ECDSA P-256 (scheme ecdsa-sha2-nistp256); the
// private key never leaves the token. Only the signer links this package:
// it needs cgo (the PKCS#11 module is a C library).
package hsm

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// URI is the part of an RFC 7512 PKCS#11 URI that selects a signing key.
type URI struct {
	Token      string // path attribute "token": the token label
	Object     string // "object": the key's label
	ID         []byte // "id": the key's CKA_ID
	ModulePath string // query "module-path": the PKCS#11 library
	Pin        string // query "pin-value", or read from "pin-source"
}

// IsURI reports whether a key reference names a PKCS#11 object.
func IsURI(ref string) bool { return strings.HasPrefix(ref, "pkcs11:") }

// ParseURI parses a PKCS#11 URI. It needs a token, an object or id, a
// module-path and a PIN (pin-value, or pin-source naming a file).
func ParseURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return URI{}, fmt.Errorf("%q is not a PKCS#11 URI (want pkcs11:token=...;object=...?module-path=...&pin-source=...)", s)
	}
	path, query, _ := strings.Cut(rest, "?")
	var u URI
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			return URI{}, fmt.Errorf("PKCS#11 URI attribute %q has no value", attr)
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return URI{}, fmt.Errorf("PKCS#11 URI attribute %s: %w", k, err)
		}
		switch k {
		case "token":
			u.Token = val
		case "object":
			u.Object = val
		case "id":
			u.ID = []byte(val)
		case "type":
			if val != "private" {
				return URI{}, fmt.Errorf("PKCS#11 URI type=%s: a signing key is type=private", val)
			}
		}
	}
	pinSource := ""
	for _, attr := range strings.Split(query, "&") {
		if attr == "" {
			continue
		}
		k, v, _ := strings.Cut(attr, "=")
		val, err := url.QueryUnescape(v)
		if err != nil {
			return URI{}, fmt.Errorf("PKCS#11 URI query %s: %w", k, err)
		}
		switch k {
		case "module-path":
			u.ModulePath = val
		case "pin-value":
			u.Pin = val
		case "pin-source":
			pinSource = val
		}
	}
	if pinSource != "" && u.Pin == "" {
		b, err := os.ReadFile(strings.TrimPrefix(pinSource, "file:"))
		if err != nil {
			return URI{}, fmt.Errorf("PKCS#11 URI pin-source: %w", err)
		}
		u.Pin = strings.TrimRight(string(b), "\r\n")
	}
	var missing []string
	if u.Token == "" {
		missing = append(missing, "token=LABEL")
	}
	if u.Object == "" && len(u.ID) == 0 {
		missing = append(missing, "object=LABEL or id=ID")
	}
	if u.ModulePath == "" {
		missing = append(missing, "?module-path=LIBRARY")
	}
	if u.Pin == "" {
		missing = append(missing, "pin-value=PIN or pin-source=FILE")
	}
	if len(missing) > 0 {
		return URI{}, errors.New("PKCS#11 URI lacks " + strings.Join(missing, ", "))
	}
	return u, nil
}
