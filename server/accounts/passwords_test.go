package accounts

import (
	"strings"
	"testing"
)

// TestDummyHashCostsWhatARealOneDoes: the hash an unknown name is checked
// against has a real hash's form and parameters, so checkPassword runs
// argon2id on it rather than refusing it early (which would tell an
// attacker which names exist).
func TestDummyHashCostsWhatARealOneDoes(t *testing.T) {
	genuine := strings.Split(hashPassword("x"), "$")
	dummy := strings.Split(dummyHash, "$")
	if len(genuine) != len(dummy) {
		t.Fatalf("dummy %q has %d fields, a real hash %d", dummyHash, len(dummy), len(genuine))
	}
	for i := range genuine[:4] {
		if genuine[i] != dummy[i] {
			t.Fatalf("field %d: dummy %q, real %q", i, dummy[i], genuine[i])
		}
	}
	for i := 4; i < len(genuine); i++ {
		if len(genuine[i]) != len(dummy[i]) {
			t.Fatalf("field %d: dummy %d characters, real %d", i, len(dummy[i]), len(genuine[i]))
		}
	}
}
