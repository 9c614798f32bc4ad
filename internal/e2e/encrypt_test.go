package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/server/s3blob/s3test"
)

// plaintextBlocks counts the 4 KiB blocks of plain (at 4 KiB offsets)
// found anywhere in hay.
func plaintextBlocks(plain, hay []byte) int {
	const block = 4096
	starts := map[uint64][]int{}
	for off := 0; off+block <= len(plain); off += block {
		k := binary.LittleEndian.Uint64(plain[off:])
		starts[k] = append(starts[k], off)
	}
	found := map[int]bool{}
	for i := 0; i+block <= len(hay); i++ {
		for _, off := range starts[binary.LittleEndian.Uint64(hay[i:])] {
			if !found[off] && bytes.Equal(hay[i:i+block], plain[off:off+block]) {
				found[off] = true
			}
		}
	}
	return len(found)
}

// plaintextOnDisk counts the 4 KiB blocks of plain in the files under dir.
func plaintextOnDisk(t *testing.T, plain []byte, dir string) (blocks int, where []string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if n := plaintextBlocks(plain, b); n > 0 {
			blocks += n
			where = append(where, fmt.Sprintf("%s (%d blocks)", p, n))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return blocks, where
}

// encryptedFor is what the director told one ECU about its encrypted
// image, from the vehicle's cached director targets.
func encryptedFor(t *testing.T, v vehicleState, serial string) (target string, key []byte, sealedSHA string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.dir, "tuf", "director", "targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Signed struct {
			Targets map[string]struct {
				Custom struct {
					Encrypted map[string]struct {
						SHA256 string `json:"sha256"`
						Key    string `json:"key"`
					} `json:"encrypted"`
				} `json:"custom"`
			} `json:"targets"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for p, tf := range m.Signed.Targets {
		if e, ok := tf.Custom.Encrypted[serial]; ok {
			k, err := base64.StdEncoding.DecodeString(e.Key)
			if err != nil {
				t.Fatal(err)
			}
			return p, k, e.SHA256
		}
	}
	t.Fatalf("the director's targets for %s name no encrypted image for %s:\n%s", v.vin, serial, b)
	return "", nil, ""
}

// TestEncryptedImages: with --encrypt-hardware-id, the DCM images are
// stored, served and bundled only sealed: no 4 KiB block of the plaintext
// is in the server's data directory or on a USB stick. Each DCM gets its
// file key wrapped for itself, which no other ECU's key opens (same VIN or
// another). A flipped bit and a cut download are refused before anything
// reaches the slot, and so are swapped chunks in the store; a clean
// download installs, as a full image and as a delta, online and from USB.
func TestEncryptedImages(t *testing.T) {
	w := newWorld(t, "--encrypt-hardware-id", dcmHW, "--auto-assign", "none", "--campaign-tick", "50ms", "--job-retry", "1ms")
	base, target := deltaPair(t, w.dir, 4<<20)
	dcm1 := findSample(t, dcmHW, "1.0.0")
	w.publishDeltaPair(base, target, "1.5.0", "3.0.0", dcm1)
	plain, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	basePlain, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	// Car 0 runs an image with nothing in common with 3.0.0 (full
	// downloads); cars 1 and 2 run the base of a delta.
	cars := []vehicleState{w.deltaVehicle(900, filepath.Join(samplesDir(), dcm1.File)), w.deltaVehicle(901, base), w.deltaVehicle(902, base)}
	dcm := func(i int) string { return fmt.Sprintf("DCM%06d", 900+i) }
	for _, c := range cars {
		update(t, c.dir, 0) // registered with its keys; checks in
	}
	dealer := w.account("dealer", "dealer-1")

	// A flipped bit, then a cut download: refused, the DCM unchanged.
	w.job(dealer, map[string]any{"vin": cars[0].vin, "ecu": "dcm", "version": "3.0.0", "reason": "encrypted image"})
	for _, fault := range []string{"corrupt-download", "truncate-download"} {
		r := update(t, cars[0].dir, 3, "--simulate", fault)
		if !strings.Contains(r.stdout+r.stderr, "does not authenticate") {
			t.Fatalf("%s: want a refusal naming the failed authentication:\n%s", fault, r)
		}
		if vs := versions(t, cars[0]); vs["dcm"] != "1.0.0" {
			t.Fatalf("%s: the DCM runs %s", fault, vs["dcm"])
		}
		time.Sleep(20 * time.Millisecond) // the job's retry time
	}
	// A clean download installs the full image, decrypted.
	update(t, cars[0].dir, 0)
	if vs := versions(t, cars[0]); vs["dcm"] != "3.0.0" {
		t.Fatalf("the DCM runs %s after a clean encrypted download", vs["dcm"])
	}
	activeBytes(t, cars[0])

	// Another ECU's key opens none of the file keys: not the head unit
	// of the same car, not the DCM of another car.
	path, wrapped, sealedSHA := encryptedFor(t, cars[0], dcm(0))
	binding := sealed.Binding{VIN: cars[0].vin, Serial: dcm(0), Target: path, SealedSHA256: sealedSHA}
	for name, keyFile := range map[string]string{
		"the same car's head unit": filepath.Join(cars[0].dir, "ecus", "HU000900", "encryption.key"),
		"another car's DCM":        filepath.Join(cars[1].dir, "ecus", dcm(1), "encryption.key"),
	} {
		k, err := sealed.LoadECUKey(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sealed.UnwrapKey(k, wrapped, binding); !errors.Is(err, sealed.ErrNotRecipient) {
			t.Errorf("%s opened the file key of %s's DCM: %v", name, cars[0].vin, err)
		}
	}
	own, err := sealed.LoadECUKey(filepath.Join(cars[0].dir, "ecus", dcm(0), "encryption.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sealed.UnwrapKey(own, wrapped, binding); err != nil {
		t.Fatalf("the DCM's own key does not open its file key: %v", err)
	}

	// Car 2 waits for its delta, sealed too, and installs from it.
	w.startCampaign(t, map[string]any{"ecu": "dcm", "version": "3.0.0", "selector": map[string]any{"vins": []string{cars[2].vin}}, "waves": []int{100}, "deltas": "wait"})
	got, last := updateUntilDCMInstalled(t, cars[2].dir, 200)
	if got.Outcome != "installed" || !got.Delta || got.Transferred > int64(len(plain))/10 {
		t.Fatalf("want 3.0.0 from an encrypted delta: %+v\n%s", got, last)
	}
	activeBytes(t, cars[2])

	// Chunks swapped in the store: refused before the slot.
	c := sealed.DefaultChunk + sealed.Overhead
	matches, _ := filepath.Glob(w.blobPath("repo/sealed/*"))
	restore := map[string][]byte{}
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < sealed.HeaderSize+3*c {
			continue // the delta: too small to matter here
		}
		swapped := bytes.Clone(b)
		copy(swapped[sealed.HeaderSize:], b[sealed.HeaderSize+c:sealed.HeaderSize+2*c])
		copy(swapped[sealed.HeaderSize+c:], b[sealed.HeaderSize:sealed.HeaderSize+c])
		if err := os.WriteFile(m, swapped, 0o600); err != nil {
			t.Fatal(err)
		}
		restore[m] = b
	}
	if len(restore) == 0 {
		t.Fatalf("no sealed image in the store: %v", matches)
	}
	// The altered base makes the delta useless; the full image's chunks
	// are swapped: nothing installs.
	w.job(dealer, map[string]any{"vin": cars[1].vin, "ecu": "dcm", "version": "3.0.0", "reason": "encrypted image"})
	if r := update(t, cars[1].dir, 3, "--simulate", "corrupt-active"); !strings.Contains(r.stdout+r.stderr, "does not authenticate") {
		t.Fatalf("swapped chunks: want a refusal naming the failed authentication:\n%s", r)
	}
	if vs := versions(t, cars[1]); vs["dcm"] != "1.5.0" {
		t.Fatalf("swapped chunks: the DCM runs %s", vs["dcm"])
	}
	for m, b := range restore {
		if err := os.WriteFile(m, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Nothing in clear on the server: not in the blobs, not in the
	// database, not in its key store.
	for name, p := range map[string][]byte{"3.0.0": plain, "1.5.0": basePlain} {
		if n, where := plaintextOnDisk(t, p, w.data); n > 0 {
			t.Errorf("%d blocks of the %s image in clear on the server: %v", n, name, where)
		}
	}

	// A USB stick carries only the sealed files and this car's keys; the
	// car installs from it (its DCM slot is altered, so from the full
	// image).
	code, stick := w.download(t, cars[1].vin, dealer, "?full=true")
	if code != 200 {
		t.Fatalf("bundle: %d %s", code, stick)
	}
	if n := plaintextBlocks(plain, stick); n > 0 {
		t.Fatalf("%d blocks of the image in clear on the USB stick", n)
	}
	if names := tarNames(t, stick); !strings.Contains(names, "sealed/") || strings.Contains(names, "targets/dcm/") {
		t.Fatalf("the stick should carry the DCM image sealed only:\n%s", names)
	}
	p := filepath.Join(w.dir, "stick.tar")
	if err := os.WriteFile(p, stick, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := agent(t, "install-usb", "--state", cars[1].dir, p); r.code != 0 {
		t.Fatalf("install from the encrypted stick:\n%s", r)
	}
	if vs := versions(t, cars[1]); vs["dcm"] != "3.0.0" {
		t.Fatalf("after the stick the DCM runs %s", vs["dcm"])
	}
	activeBytes(t, cars[1])
}

// TestEncryptedOnS3: with the blobs in a real S3-compatible store, the
// images of encrypted hardware are in it only sealed (no 4 KiB block of
// the plaintext in the store's files), and a car installs from them.
func TestEncryptedOnS3(t *testing.T) {
	gw := s3test.Start(t)
	w := newS3World(t, gw, "--encrypt-hardware-id", dcmHW, "--deltas", "off")
	base, target := deltaPair(t, w.dir, 2<<20)
	w.publishDeltaPair(base, target, "1.5.0", "3.0.0")
	v := w.deltaVehicle(910, base)
	update(t, v.dir, 0)
	if vs := versions(t, v); vs["dcm"] != "3.0.0" {
		t.Fatalf("the DCM runs %s", vs["dcm"])
	}
	activeBytes(t, v)
	for _, img := range []string{base, target} {
		p, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if n := plaintextBlocks(p, p); n != len(p)/4096 {
			t.Fatalf("the block search finds %d of the %d blocks of an image in itself", n, len(p)/4096)
		}
		for _, dir := range []string{gw.Dir(), w.data} {
			if n, where := plaintextOnDisk(t, p, dir); n > 0 {
				t.Errorf("%d blocks of %s in clear: %v", n, filepath.Base(img), where)
			}
		}
	}
}
