package vin

import "testing"

// FuzzValidate: Validate never panics, and accepts exactly the 17-character
// strings whose ninth character is their check digit.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{"JTMBFREV0N0000001", "1HGCM82633A004352", "", "JTMBFREV0N000000", "JTMBFREVIN0000001", "jtmbfrev0n0000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		err := Validate(v)
		d, derr := CheckDigit(v)
		switch {
		case err == nil && (len(v) != 17 || derr != nil || v[8] != d):
			t.Fatalf("Validate accepted %q (check digit %c, %v)", v, d, derr)
		case err != nil && derr == nil && v[8] == d:
			t.Fatalf("Validate refused %q with a correct check digit: %v", v, err)
		}
	})
}
