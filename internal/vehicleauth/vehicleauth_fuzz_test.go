package vehicleauth

import (
	"bytes"
	"crypto/ed25519"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzParse: any Authorization header parses or is refused, never a
// panic; what parses meets the form Verify relies on.
func FuzzParse(f *testing.F) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	req, _ := http.NewRequest("POST", "http://roadsign.example/api/v1/vehicles/JTMBFREV0N0000001/manifest", nil)
	Sign(req, key, "JTMBFREV0N0000001", []byte("{}"), time.Unix(1_800_000_000, 0))
	f.Add(req.Header.Get("Authorization"))
	f.Add(Scheme + " vin=X,ts=1,nonce=00,body=00,sig=AA")
	f.Add(Scheme + " " + strings.Repeat("a", 600))
	f.Add("Bearer abc")
	f.Add("")
	f.Fuzz(func(t *testing.T, h string) {
		c, ours, err := Parse(h)
		if !ours {
			if strings.HasPrefix(h, Scheme+" ") {
				t.Fatalf("Parse(%q) says the header is not a vehicle signature", h)
			}
			return
		}
		if err != nil {
			return
		}
		if c.VIN == "" || len(c.VIN) > 32 || c.TS <= 0 || len(c.Sig) != ed25519.SignatureSize || len(c.Nonce) != 32 || len(c.BodySHA256) != 64 {
			t.Fatalf("Parse(%q) accepted %+v", h, c)
		}
	})
}

// FuzzVerify: a signed request verifies, and changing any byte of its
// header, method, host, path or query makes it fail.
func FuzzVerify(f *testing.F) {
	f.Add("POST", "roadsign.example", "/api/v1/vehicles/JTMBFREV0N0000001/manifest", "", 0, byte(1))
	f.Add("GET", "127.0.0.1:8080", "/director/JTMBFREV0N0000001/timestamp.json", "a=b", 40, byte(0x20))
	f.Fuzz(func(t *testing.T, method, host, path, query string, at int, flip byte) {
		if method == "" || strings.ContainsAny(method+host+path+query, " \r\n\t#?%") || !strings.HasPrefix(path, "/") || host == "" {
			return
		}
		key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
		now := time.Unix(1_800_000_000, 0)
		req, err := http.NewRequest(method, "http://"+host+path+"?"+query, nil)
		if err != nil || req.URL.EscapedPath() != path || req.URL.RawQuery != query {
			return
		}
		Sign(req, key, "JTMBFREV0N0000001", nil, now)
		h := req.Header.Get("Authorization")
		c, _, err := Parse(h)
		if err != nil {
			t.Fatalf("a signed header does not parse: %v", err)
		}
		if err := c.Verify(key.Public().(ed25519.PublicKey), req, now); err != nil {
			t.Fatalf("a signed request does not verify: %v", err)
		}
		if flip == 0 {
			return
		}
		// Change one byte of the header after the scheme.
		i := len(Scheme) + 1 + int(uint(at)%uint(max(1, len(h)-len(Scheme)-1)))
		b := []byte(h)
		b[i] ^= flip
		if c2, _, err := Parse(string(b)); err == nil && c2.Verify(key.Public().(ed25519.PublicKey), req, now) == nil && string(b) != h {
			if c2.VIN == c.VIN && c2.TS == c.TS && c2.Nonce == c.Nonce && c2.BodySHA256 == c.BodySHA256 && bytes.Equal(c2.Sig, c.Sig) {
				return // the change did not alter what was signed (for example, case in a key name that is ignored)
			}
			t.Fatalf("header changed at byte %d still verifies: %q", i, b)
		}
		// The same header on another path fails.
		other := req.Clone(req.Context())
		other.URL.Path += "x"
		if c.Verify(key.Public().(ed25519.PublicKey), other, now) == nil {
			t.Fatalf("a signature for %s verifies for %s", req.URL.Path, other.URL.Path)
		}
	})
}
