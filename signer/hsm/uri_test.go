package hsm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pin, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		uri     string
		want    URI
		wantErr string
	}{
		{"pkcs11:token=roadsign;object=root-1?module-path=/lib/p11.so&pin-value=99",
			URI{Token: "roadsign", Object: "root-1", ModulePath: "/lib/p11.so", Pin: "99"}, ""},
		{"pkcs11:token=road%20sign;id=%01%02;type=private?module-path=/lib/p11.so&pin-source=file:" + pin,
			URI{Token: "road sign", ID: []byte{1, 2}, ModulePath: "/lib/p11.so", Pin: "1234"}, ""},
		{"pkcs11:object=x;token=t?module-path=/m.so&pin-source=" + pin,
			URI{Token: "t", Object: "x", ModulePath: "/m.so", Pin: "1234"}, ""},
		{"file:/etc/key", URI{}, "not a PKCS#11 URI"},
		{"pkcs11:token=t;object=x?pin-value=1", URI{}, "module-path"},
		{"pkcs11:object=x?module-path=/m.so&pin-value=1", URI{}, "token=LABEL"},
		{"pkcs11:token=t?module-path=/m.so&pin-value=1", URI{}, "object=LABEL or id=ID"},
		{"pkcs11:token=t;object=x?module-path=/m.so", URI{}, "pin-value=PIN or pin-source=FILE"},
		{"pkcs11:token=t;object=x;type=public?module-path=/m.so&pin-value=1", URI{}, "type=private"},
		{"pkcs11:token=t;object?module-path=/m.so&pin-value=1", URI{}, "has no value"},
		{"pkcs11:token=t;object=x?module-path=/m.so&pin-source=/nonexistent/pin", URI{}, "pin-source"},
	}
	for _, tt := range tests {
		got, err := ParseURI(tt.uri)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseURI(%q) error = %v, want one naming %q", tt.uri, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseURI(%q): %v", tt.uri, err)
			continue
		}
		if got.Token != tt.want.Token || got.Object != tt.want.Object || string(got.ID) != string(tt.want.ID) ||
			got.ModulePath != tt.want.ModulePath || got.Pin != tt.want.Pin {
			t.Errorf("ParseURI(%q) = %+v, want %+v", tt.uri, got, tt.want)
		}
	}
}
