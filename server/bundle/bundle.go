// Package bundle builds the USB update for one VIN: a tar archive with
// the image repository's metadata as published, director metadata made
// for this bundle, both root chains, exactly the images the director
// assigns, and a README. It is written while it streams (images are
// copied from the blob store, never held in memory).
//
// Offline freshness: the image repository's timestamp and snapshot live a
// day or a week, a bundle weeks. So the bundle's director metadata (signed
// by the online director keys for this VIN, expiring when the bundle does)
// is marked as USB bundle metadata and pins the image timestamp it ships
// with; the agent checks the image repository as of the issue time the
// director vouches for, and the offline-signed root and targets as of now.
// Marked metadata is never trusted online, and issuing a bundle changes
// nothing the vehicle fetches online. docs/security.md has the argument.
package bundle

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/auditlog"
	"github.com/roadsign/roadsign/server/director"
	"github.com/roadsign/roadsign/server/repo"
)

// DefaultValidity is how long a bundle installs when the caller does not
// say: long enough to fetch a USB stick and find time for the car.
const DefaultValidity = 30 * 24 * time.Hour

// Manifest is bundle.json, the bundle's description.
type Manifest struct {
	VIN        string    `json:"vin"`
	IssuedAt   time.Time `json:"issuedAt"`
	ValidUntil time.Time `json:"validUntil"`
	Images     []string  `json:"images"`
}

// Service builds bundles.
type Service struct {
	repo     *repo.Repo
	director *director.Service
	now      func() time.Time
	issued   *prometheus.CounterVec
}

// New returns the bundle service; it counts bundles on reg.
func New(r *repo.Repo, d *director.Service, now func() time.Time, reg prometheus.Registerer) *Service {
	issued := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roadsign_bundles_issued_total", Help: "USB bundles streamed, by result (complete, failed).",
	}, []string{"result"})
	reg.MustRegister(issued)
	return &Service{repo: r, director: d, now: now, issued: issued}
}

type file struct {
	name string
	data []byte // metadata and text
	// or a blob, streamed
	open func(ctx context.Context) (io.ReadCloser, int64, error)
	size int64
}

// Plan is a checked bundle, ready to stream.
type Plan struct {
	Manifest Manifest
	files    []file
	issued   *prometheus.CounterVec
}

// Prepare gathers and checks everything the bundle will hold, valid for
// valid from now. It fails with a conflict (metadata_expires_too_soon) if
// an offline-signed root or targets expires before the bundle would.
// Where the director offers a delta from the image the server records for
// an ECU, the bundle carries the delta, and the full image as well only
// with full (the fallback when the car's slot is not what was recorded).
func (s *Service) Prepare(ctx context.Context, v server.Vehicle, valid time.Duration, full bool) (*Plan, error) {
	now := s.now().UTC().Truncate(time.Second)
	until := now.Add(valid)
	p := &Plan{Manifest: Manifest{VIN: v.VIN, IssuedAt: now, ValidUntil: until}, issued: s.issued}

	// Image repository: root chain, timestamp, snapshot, targets.
	img, head, err := s.imageRepo(ctx, now, until)
	if err != nil {
		return nil, err
	}
	p.files = append(p.files, img...)

	// Director: root chain, then metadata made for this bundle.
	dirRoots, err := s.roots(ctx, "director", func(n string) (*repo.File, error) { return s.repo.OpenDirectorRoot(ctx, n) }, until)
	if err != nil {
		return nil, err
	}
	p.files = append(p.files, dirRoots...)
	tsSum := sha256.Sum256(head.TimestampRaw)
	signed, assigned, err := s.director.ForBundle(ctx, v, meta.USBBundle{IssuedAt: now, ValidUntil: until,
		ImageTimestampVersion: head.Timestamp.Signed.Version, ImageTimestampSHA256: hex.EncodeToString(tsSum[:])})
	if err != nil {
		return nil, err
	}
	for _, m := range signed {
		name := fmt.Sprintf("director/%d.%s.json", m.Version, m.Role)
		if m.Role == metadata.TIMESTAMP {
			name = "director/timestamp.json"
		}
		p.files = append(p.files, file{name: name, data: m.Body})
	}
	for _, a := range assigned {
		what := fmt.Sprintf("%s -> ECU %s (%s %s)", a.Path, a.Serial, a.ECUType, a.Image.Version)
		if a.Encrypted != nil {
			// Only the sealed files go on the stick; the director metadata
			// carries their keys, wrapped for this car's ECUs alone.
			if d := a.Encrypted.Delta; d != nil {
				p.addSealed(s.repo, d)
				if !full {
					p.Manifest.Images = append(p.Manifest.Images, what+" as an encrypted delta from the image recorded for it")
					continue
				}
				what += ", with a delta from the image recorded for it"
			}
			p.addSealed(s.repo, a.Encrypted)
			p.Manifest.Images = append(p.Manifest.Images, what+", encrypted for this ECU")
			continue
		}
		if a.Delta != "" {
			dtf, ok, err := s.repo.Delta(ctx, a.Delta)
			if err != nil {
				return nil, err
			}
			if ok {
				if err := p.addTarget(s.repo, a.Delta, dtf); err != nil {
					return nil, err
				}
				if !full {
					p.Manifest.Images = append(p.Manifest.Images, what+" as a delta from the image recorded for it")
					continue
				}
				what += ", with a delta from the image recorded for it"
			}
		}
		if err := p.addTarget(s.repo, a.Path, a.Target); err != nil {
			return nil, err
		}
		p.Manifest.Images = append(p.Manifest.Images, what)
	}
	return p, nil
}

// addTarget adds a target file of the image repository, streamed from
// the blob store when the bundle is written.
func (p *Plan) addTarget(r *repo.Repo, path string, tf *metadata.TargetFiles) error {
	key, err := repo.TargetKey(path, tf)
	if err != nil {
		return err
	}
	rel := strings.TrimPrefix(key, "repo/")
	p.files = append(p.files, file{name: rel, size: tf.Length, open: func(ctx context.Context) (io.ReadCloser, int64, error) {
		f, err := r.Open(ctx, rel)
		if err != nil {
			return nil, 0, err
		}
		return f, f.Size, nil
	}})
	return nil
}

// addSealed adds a sealed file (an encrypted image or delta), at
// sealed/NAME as the server serves it under /repo/.
func (p *Plan) addSealed(r *repo.Repo, et *director.EncryptedTarget) {
	rel := "sealed/" + et.Sealed
	p.files = append(p.files, file{name: rel, size: et.Length, open: func(ctx context.Context) (io.ReadCloser, int64, error) {
		f, err := r.Open(ctx, rel)
		if err != nil {
			return nil, 0, err
		}
		return f, f.Size, nil
	}})
}

func readAll(f *repo.File, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

type expirer interface{ IsExpired(time.Time) bool }

func checkExpiry(what string, e expirer, exp time.Time, until time.Time) error {
	if e.IsExpired(until) {
		return server.CodedErrorf(server.KindConflict, errcode.MetadataExpiresTooSoon,
			"%s expires at %s, before the bundle's validity ends at %s; ask for fewer days (?valid_days=), or have the release engineer re-sign it with a later expiry and publish",
			what, exp.Format(time.RFC3339), until.Format(time.RFC3339))
	}
	return nil
}

// roots adds a repository's whole root chain (1.root.json up to the current).
func (s *Service) roots(ctx context.Context, dir string, open func(string) (*repo.File, error), until time.Time) ([]file, error) {
	cur, err := readAll(open("1.root.json"))
	if err != nil {
		return nil, fmt.Errorf("%s root v1: %w", dir, err)
	}
	var out []file
	for v := 1; ; v++ {
		b := cur
		if v > 1 {
			b, err = readAll(open(fmt.Sprintf("%d.root.json", v)))
			if err != nil {
				break // the chain ends at the first missing version
			}
		}
		out = append(out, file{name: fmt.Sprintf("%s/%d.root.json", dir, v), data: b})
		cur = b
	}
	root, err := metadata.Root().FromBytes(cur)
	if err != nil {
		return nil, err
	}
	return out, checkExpiry(dir+" root", &root.Signed, root.Signed.Expires, until)
}

// imageRepo adds the image repository: its root chain and the published
// timestamp, snapshot and targets. Timestamp and snapshot must be valid
// now (the agent checks them as of the issue time); root and targets,
// signed offline, must outlast the bundle.
func (s *Service) imageRepo(ctx context.Context, now, until time.Time) ([]file, *repo.Head, error) {
	out, err := s.roots(ctx, "image", func(n string) (*repo.File, error) { return s.repo.Open(ctx, n) }, until)
	if err != nil {
		return nil, nil, err
	}
	h, err := s.repo.Head(ctx)
	if err != nil {
		return nil, nil, err
	}
	for _, c := range []struct {
		what string
		e    expirer
		exp  time.Time
	}{
		{"the image repository's timestamp", &h.Timestamp.Signed, h.Timestamp.Signed.Expires},
		{"the image repository's snapshot", &h.Snapshot.Signed, h.Snapshot.Signed.Expires},
	} {
		if c.e.IsExpired(now) {
			return nil, nil, server.Errorf(server.KindUnavailable, "%s expired at %s and has not been re-signed; check the server's /status", c.what, c.exp.Format(time.RFC3339))
		}
	}
	if err := checkExpiry("the image repository's targets", &h.Targets.Signed, h.Targets.Signed.Expires, until); err != nil {
		return nil, nil, err
	}
	out = append(out,
		file{name: "image/timestamp.json", data: h.TimestampRaw},
		file{name: fmt.Sprintf("image/%d.snapshot.json", h.Snapshot.Signed.Version), data: h.SnapshotRaw},
		file{name: fmt.Sprintf("image/%d.targets.json", h.Targets.Signed.Version), data: h.TargetsRaw})
	if dm, ok := h.Snapshot.Signed.Meta[meta.DeltaRole+".json"]; ok {
		name := fmt.Sprintf("%d.%s.json", dm.Version, meta.DeltaRole)
		b, err := readAll(s.repo.Open(ctx, name))
		if err != nil {
			return nil, nil, fmt.Errorf("image repository %s: %w", name, err)
		}
		out = append(out, file{name: "image/" + name, data: b})
	}
	return out, h, nil
}

const readme = `Roadsign USB update for VIN %s
Issued %s. Install it before %s (%s); after that the car refuses it
and you download a new one.

What is inside: signed metadata of the director (what this car must run)
and of the image repository (every released image), each with its whole
chain of root keys, and the firmware images assigned to this car:
%s
How to install:
 1. Copy this file, unchanged, to a FAT32 or exFAT USB stick.
 2. With the engine running and the car parked, plug the stick into the
    USB port of the head unit.
 3. Confirm "Software update from USB" on the screen. The car checks every
    signature and hash; a bundle for another VIN, an expired bundle, or
    one older than a bundle the car already installed is refused and
    nothing is installed.
 4. Wait until the screen says the update is complete; do not switch off.
 5. Connected services re-authorize automatically once the car is online.
    The install is reported to the server at the next connection.

(Bench equivalent: roadsign-agent install-usb --state DIR THIS_FILE)
`

// Write streams the bundle as a tar archive.
func (p *Plan) Write(ctx context.Context, w io.Writer) error {
	tw := tar.NewWriter(w)
	mb, _ := json.MarshalIndent(p.Manifest, "", "  ")
	var images strings.Builder
	for _, i := range p.Manifest.Images {
		images.WriteString(" - " + i + "\n")
	}
	if len(p.Manifest.Images) == 0 {
		images.WriteString(" (none: this car already runs what it should)\n")
	}
	head := []file{
		{name: "README.txt", data: []byte(fmt.Sprintf(readme, p.Manifest.VIN, p.Manifest.IssuedAt.Format(time.RFC3339),
			p.Manifest.ValidUntil.Format("2 Jan 2006"), p.Manifest.ValidUntil.Format(time.RFC3339), images.String()))},
		{name: "bundle.json", data: mb},
	}
	for _, f := range append(head, p.files...) {
		if err := writeFile(ctx, tw, f, p.Manifest.IssuedAt); err != nil {
			return fmt.Errorf("bundle %s: %w", f.name, err)
		}
	}
	return tw.Close()
}

func writeFile(ctx context.Context, tw *tar.Writer, f file, mod time.Time) error {
	if f.open == nil {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mod, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(f.data)
		return err
	}
	rc, size, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	if size != f.size {
		return fmt.Errorf("stored image is %d bytes, metadata says %d", size, f.size)
	}
	if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: size, ModTime: mod, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err = io.CopyN(tw, rc, size)
	return err
}

// Serve audits the issue and streams the bundle as a download.
func (p *Plan) Serve(ctx context.Context, w http.ResponseWriter, store auditlog.Appender, by server.Principal, now time.Time) error {
	if err := auditlog.Record(ctx, store, now, by, "bundle.issue", p.Manifest.VIN,
		fmt.Sprintf("valid until %s; images %v", p.Manifest.ValidUntil.Format(time.RFC3339), p.Manifest.Images)); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="roadsign-usb-%s-%s.tar"`, p.Manifest.VIN, p.Manifest.IssuedAt.Format("20060102")))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := p.Write(ctx, w); err != nil {
		p.issued.WithLabelValues("failed").Inc()
		return err
	}
	p.issued.WithLabelValues("complete").Inc()
	return nil
}
