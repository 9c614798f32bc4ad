// Package vin validates vehicle identification numbers (ISO 3779 / 49 CFR
// 565): 17 characters, no I, O or Q, and a valid check digit in position 9.
package vin

import "fmt"

var weights = [17]int{8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2}

func value(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'A' && c <= 'H':
		return int(c-'A') + 1, true
	case c >= 'J' && c <= 'N':
		return int(c-'J') + 1, true
	case c == 'P':
		return 7, true
	case c == 'R':
		return 9, true
	case c >= 'S' && c <= 'Z':
		return int(c-'S') + 2, true
	}
	return 0, false
}

// CheckDigit computes the check digit of a 17-character VIN (position 9 is ignored).
func CheckDigit(v string) (byte, error) {
	if len(v) != 17 {
		return 0, fmt.Errorf("VIN %q has %d characters; a VIN has 17", v, len(v))
	}
	sum := 0
	for i := 0; i < 17; i++ {
		c := v[i]
		switch c {
		case 'I', 'O', 'Q':
			return 0, fmt.Errorf("VIN %q has the letter %c at position %d; VINs never use I, O or Q", v, c, i+1)
		}
		n, ok := value(c)
		if !ok {
			return 0, fmt.Errorf("VIN %q has %q at position %d; use digits and capital letters only", v, c, i+1)
		}
		sum += n * weights[i]
	}
	if d := sum % 11; d == 10 {
		return 'X', nil
	} else {
		return byte('0' + d), nil
	}
}

// Validate returns an error naming what is wrong with v, or nil.
func Validate(v string) error {
	d, err := CheckDigit(v)
	if err != nil {
		return err
	}
	if v[8] != d {
		return fmt.Errorf("VIN %q fails its check digit: position 9 is %c, should be %c; check for a typo", v, v[8], d)
	}
	return nil
}
