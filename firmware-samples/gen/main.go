// Command gen writes Roadsign firmware images.
//
//	go run ./firmware-samples/gen --ecu dcm --hardware-id DCM-4G-24MM --version 1.0.0 [--size BYTES] [--unbootable] -o FILE
//	go run ./firmware-samples/gen --samples firmware-samples   # regenerate the committed samples and samples.json
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/roadsign/roadsign/internal/fwimage"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ecu := fs.String("ecu", "", "ECU type: head-unit or dcm")
	hwid := fs.String("hardware-id", "", "hardware ID the image is built for")
	version := fs.String("version", "", "firmware version, e.g. 1.2.0")
	size := fs.Int64("size", 256<<10, "image size in bytes, header included")
	unbootable := fs.Bool("unbootable", false, "write an image that verifies but fails its boot check")
	out := fs.String("o", "", "output file")
	samples := fs.String("samples", "", "regenerate every committed sample and samples.json in this folder")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *samples != "" {
		return writeSamples(*samples)
	}
	if !fwimage.ValidECU(*ecu) || *hwid == "" || *version == "" || *out == "" {
		return fmt.Errorf("%w: --ecu head-unit|dcm, --hardware-id, --version and -o are required", errUsage)
	}
	return writeImage(*out, fwimage.Spec{ECU: *ecu, HardwareID: *hwid, Version: *version, Size: *size, Unbootable: *unbootable})
}

// writeImage writes atomically: a reader never sees a half-written image.
func writeImage(path string, s fwimage.Spec) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".gen-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := fwimage.Write(tmp, s); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// catalogue is the committed sample set: two hardware IDs per ECU type,
// three versions each, and one DCM image that verifies but does not boot.
func catalogue() []fwimage.Sample {
	var out []fwimage.Sample
	hw := []struct{ ecu, id string }{
		{fwimage.HeadUnit, "HU-GEN5-NA"}, {fwimage.HeadUnit, "HU-GEN5-EU"},
		{fwimage.DCM, "DCM-4G-24MM"}, {fwimage.DCM, "DCM-5G-25MM"},
	}
	versions := []string{"1.0.0", "1.1.0", "2.0.0"}
	for i, h := range hw {
		for j, v := range versions {
			out = append(out, fwimage.Sample{
				File: fmt.Sprintf("%s-%s-%s.img", h.ecu, h.id, v), ECU: h.ecu, HardwareID: h.id,
				Version: v, ReleaseCounter: j + 1, Bootable: true,
				Size: int64(192+32*i+64*j) << 10,
			})
		}
	}
	out = append(out, fwimage.Sample{
		File: "dcm-DCM-4G-24MM-2.1.0-bootfail.img", ECU: fwimage.DCM, HardwareID: "DCM-4G-24MM",
		Version: "2.1.0", ReleaseCounter: 4, Bootable: false, Size: 200 << 10,
	})
	return out
}

func writeSamples(dir string) error {
	list := catalogue()
	for _, s := range list {
		if err := writeImage(filepath.Join(dir, s.File), s.Spec()); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "samples.json"), append(b, '\n'), 0o644)
}
