// Package fwimage defines Roadsign's firmware image format: a fixed-size
// header that the (simulated) bootloader checks, followed by the payload.
//
// Layout of the 128-byte header, all integers big-endian:
//
//	off  len  field
//	0    4    magic "RSFW"
//	4    2    format version (1)
//	6    1    ECU type (1 head-unit, 2 dcm)
//	7    1    flags (reserved, 0)
//	8    32   hardware ID, NUL-padded
//	40   24   version string, NUL-padded
//	64   8    payload length
//	72   32   payload sha256
//	104  4    CRC-32 (IEEE) of bytes 0..103
//	108  20   zero
package fwimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
)

// HeaderSize is the size of the image header in bytes.
const HeaderSize = 128

const (
	magic         = "RSFW"
	formatVersion = 1
	maxHardwareID = 32
	maxVersion    = 24
)

// ECU types as named on the command line and in metadata.
const (
	HeadUnit = "head-unit"
	DCM      = "dcm"
)

// ErrBootCheck is returned when an image fails the bootloader's checks.
var ErrBootCheck = errors.New("boot check failed")

// Header is the decoded image header.
type Header struct {
	ECU           string
	HardwareID    string
	Version       string
	PayloadLength int64
	PayloadSHA256 [32]byte
}

// ValidECU reports whether ecu names a supported ECU type.
func ValidECU(ecu string) bool { return ecu == HeadUnit || ecu == DCM }

func ecuCode(ecu string) (byte, error) {
	switch ecu {
	case HeadUnit:
		return 1, nil
	case DCM:
		return 2, nil
	}
	return 0, fmt.Errorf("unknown ECU type %q (want %s or %s)", ecu, HeadUnit, DCM)
}

func ecuName(code byte) (string, error) {
	switch code {
	case 1:
		return HeadUnit, nil
	case 2:
		return DCM, nil
	}
	return "", fmt.Errorf("unknown ECU type code %d", code)
}

// Marshal encodes h into a HeaderSize-byte header.
func (h Header) Marshal() ([]byte, error) {
	code, err := ecuCode(h.ECU)
	if err != nil {
		return nil, err
	}
	if h.HardwareID == "" || len(h.HardwareID) > maxHardwareID {
		return nil, fmt.Errorf("hardware ID %q: want 1 to %d bytes", h.HardwareID, maxHardwareID)
	}
	if h.Version == "" || len(h.Version) > maxVersion {
		return nil, fmt.Errorf("version %q: want 1 to %d bytes", h.Version, maxVersion)
	}
	if h.PayloadLength < 0 {
		return nil, fmt.Errorf("negative payload length %d", h.PayloadLength)
	}
	b := make([]byte, HeaderSize)
	copy(b[0:4], magic)
	binary.BigEndian.PutUint16(b[4:6], formatVersion)
	b[6] = code
	copy(b[8:40], h.HardwareID)
	copy(b[40:64], h.Version)
	binary.BigEndian.PutUint64(b[64:72], uint64(h.PayloadLength))
	copy(b[72:104], h.PayloadSHA256[:])
	binary.BigEndian.PutUint32(b[104:108], crc32.ChecksumIEEE(b[:104]))
	return b, nil
}

// ParseHeader decodes and checks the integrity of a header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: image is %d bytes, shorter than its %d-byte header", ErrBootCheck, len(b), HeaderSize)
	}
	if string(b[0:4]) != magic {
		return Header{}, fmt.Errorf("%w: bad magic %q", ErrBootCheck, b[0:4])
	}
	if v := binary.BigEndian.Uint16(b[4:6]); v != formatVersion {
		return Header{}, fmt.Errorf("%w: unsupported header format %d", ErrBootCheck, v)
	}
	if got, want := crc32.ChecksumIEEE(b[:104]), binary.BigEndian.Uint32(b[104:108]); got != want {
		return Header{}, fmt.Errorf("%w: header CRC mismatch", ErrBootCheck)
	}
	ecu, err := ecuName(b[6])
	if err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrBootCheck, err)
	}
	if b[7] != 0 || bytes.ContainsFunc(b[108:HeaderSize], func(r rune) bool { return r != 0 }) {
		return Header{}, fmt.Errorf("%w: reserved header bytes are not 0", ErrBootCheck)
	}
	h := Header{
		ECU:           ecu,
		HardwareID:    string(bytes.TrimRight(b[8:40], "\x00")),
		Version:       string(bytes.TrimRight(b[40:64], "\x00")),
		PayloadLength: int64(binary.BigEndian.Uint64(b[64:72])),
	}
	switch {
	case h.HardwareID == "" || h.Version == "":
		return Header{}, fmt.Errorf("%w: header names no hardware ID or no version", ErrBootCheck)
	case h.PayloadLength < 0:
		return Header{}, fmt.Errorf("%w: header payload length %d is negative", ErrBootCheck, h.PayloadLength)
	}
	copy(h.PayloadSHA256[:], b[72:104])
	return h, nil
}

// ReadHeader reads and decodes the header at the start of r.
func ReadHeader(r io.Reader) (Header, error) {
	b := make([]byte, HeaderSize)
	if _, err := io.ReadFull(r, b); err != nil {
		return Header{}, fmt.Errorf("%w: read header: %v", ErrBootCheck, err)
	}
	return ParseHeader(b)
}

// BootCheck is what the simulated bootloader runs before it lets a slot
// boot: the header must be intact, name the ECU's type and hardware ID, and
// the payload must have exactly the length and sha256 the header records.
// It streams, so memory does not depend on the image size.
func BootCheck(r io.Reader, ecu, hardwareID string) (Header, error) {
	h, err := ReadHeader(r)
	if err != nil {
		return Header{}, err
	}
	if h.ECU != ecu {
		return h, fmt.Errorf("%w: image is for ECU type %s, not %s", ErrBootCheck, h.ECU, ecu)
	}
	if h.HardwareID != hardwareID {
		return h, fmt.Errorf("%w: image is for hardware %s, not %s", ErrBootCheck, h.HardwareID, hardwareID)
	}
	sum := sha256.New()
	n, err := io.CopyBuffer(sum, io.LimitReader(r, h.PayloadLength+1), make([]byte, 1<<20))
	if err != nil {
		return h, fmt.Errorf("%w: read payload: %v", ErrBootCheck, err)
	}
	if n != h.PayloadLength {
		return h, fmt.Errorf("%w: payload is %d bytes, header says %d", ErrBootCheck, n, h.PayloadLength)
	}
	if !bytes.Equal(sum.Sum(nil), h.PayloadSHA256[:]) {
		return h, fmt.Errorf("%w: payload checksum mismatch", ErrBootCheck)
	}
	return h, nil
}

// Spec describes an image to generate.
type Spec struct {
	ECU        string
	HardwareID string
	Version    string
	// Size is the total image size in bytes, header included.
	Size int64
	// Unbootable makes an image whose header records a wrong payload
	// checksum: it can be signed and verified, but fails its boot check.
	Unbootable bool
}

// Write streams the image described by s to w. The payload is
// deterministic (seeded from ECU, hardware ID and version), so the committed
// samples can be regenerated byte for byte. It makes two passes over the
// generated payload (one to hash, one to write) and so needs no buffer of
// the image's size.
func Write(w io.Writer, s Spec) error {
	if s.Size < HeaderSize {
		return fmt.Errorf("image size %d is smaller than the %d-byte header", s.Size, HeaderSize)
	}
	payloadLen := s.Size - HeaderSize
	sum := sha256.New()
	if _, err := io.Copy(sum, payload(s, payloadLen)); err != nil {
		return fmt.Errorf("hash payload: %w", err)
	}
	h := Header{ECU: s.ECU, HardwareID: s.HardwareID, Version: s.Version, PayloadLength: payloadLen}
	copy(h.PayloadSHA256[:], sum.Sum(nil))
	if s.Unbootable {
		h.PayloadSHA256[0] ^= 0xff
	}
	hdr, err := h.Marshal()
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if _, err := io.Copy(w, payload(s, payloadLen)); err != nil {
		return fmt.Errorf("write payload: %w", err)
	}
	return nil
}

func payload(s Spec, n int64) io.Reader {
	seed := sha256.Sum256([]byte(s.ECU + "\x00" + s.HardwareID + "\x00" + s.Version))
	return io.LimitReader(&prngReader{rng: rand.NewChaCha8(seed)}, n)
}

type prngReader struct{ rng *rand.ChaCha8 }

func (p *prngReader) Read(b []byte) (int, error) { return p.rng.Read(b) }
