package vin

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		vin     string
		wantErr string
	}{
		{"1M8GDM9AXKP042788", ""}, // the textbook example
		{"11111111111111111", ""}, // all ones: check digit 1
		{"JTMBFREV0ND001001", "check digit"},
		{"1M8GDM9AXKP04278", "17"},
		{"1M8GDM9AXKP0427888", "17"},
		{"1M8GDM9AXKP04278O", "I, O or Q"},
		{"1M8GDM9AXKP04278q", "capital"},
		{"1M8GDM9A1KP042788", "position 9"},
	}
	for _, tt := range tests {
		err := Validate(tt.vin)
		if tt.wantErr == "" && err != nil {
			t.Errorf("%s: %v", tt.vin, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: err = %v, want one mentioning %q", tt.vin, err, tt.wantErr)
		}
	}
}
