package fwimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

// FuzzParseHeader: any bytes give a header or an ErrBootCheck, never a
// panic, and a header that parses encodes back to the same bytes. Each
// input is also tried with its magic, format and CRC made right, so the
// fields behind the CRC get exercised too.
func FuzzParseHeader(f *testing.F) {
	var img bytes.Buffer
	if err := Write(&img, Spec{ECU: "dcm", HardwareID: "DCM-4G-24MM", Version: "1.0.0", Size: 4096}); err != nil {
		f.Fatal(err)
	}
	good := img.Bytes()[:HeaderSize]
	f.Add(good)
	f.Add(good[:50])
	f.Add([]byte{})
	bad := bytes.Clone(good)
	bad[70] ^= 1
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) {
			h, err := ParseHeader(b)
			if err != nil {
				if !errors.Is(err, ErrBootCheck) {
					t.Fatalf("ParseHeader: %v is not an ErrBootCheck", err)
				}
				return
			}
			again, err := h.Marshal()
			if err != nil {
				t.Fatalf("ParseHeader accepted a header it cannot write: %+v: %v", h, err)
			}
			if !bytes.Equal(again, b[:HeaderSize]) {
				t.Fatalf("header round trip changed the bytes:\n%x\n%x", b[:HeaderSize], again)
			}
		}
		check(b)
		if len(b) >= HeaderSize {
			fixed := bytes.Clone(b)
			copy(fixed[0:4], magic)
			binary.BigEndian.PutUint16(fixed[4:6], formatVersion)
			binary.BigEndian.PutUint32(fixed[104:108], crc32.ChecksumIEEE(fixed[:104]))
			check(fixed)
		}
	})
}
