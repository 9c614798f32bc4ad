package hsm

import (
	"strings"
	"testing"
)

// FuzzParseURI: any --key value parses or is refused in one line; what
// parses names a token, an object or id, a module and a PIN.
func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=roadsign;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234")
	f.Add("pkcs11:token=a%20b;id=%01?module-path=/m.so&pin-value=1")
	f.Add("pkcs11:;;;?&&&")
	f.Add("pkcs11:token=%zz")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("a two-line error for %q: %v", s, err)
			}
			return
		}
		if u.Token == "" || (u.Object == "" && len(u.ID) == 0) || u.ModulePath == "" || u.Pin == "" {
			t.Fatalf("ParseURI(%q) accepted %+v", s, u)
		}
	})
}
