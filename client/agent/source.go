package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/api"
	"github.com/roadsign/roadsign/client/download"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/client/usb"
	"github.com/roadsign/roadsign/internal/meta"
)

// Source is where a cycle's metadata and images come from: the server
// online, or a USB bundle offline. Every source is verified the same way,
// from the vehicle's pinned roots and the signed lengths and hashes; a
// source only says where the bytes come from, as go-tuf's Fetcher hides
// that from its updater. (Secondaries and delta images will be sources, or
// wrap one.)
type Source interface {
	// Refresh verifies the image repository and the director's
	// assignment from the vehicle's trusted roots.
	Refresh(ctx context.Context) (images, directed *tufclient.Trusted, err error)
	// Fetch writes target t into w from offset (the bytes before it are
	// in w already), never reading past the signed length, and tells
	// progress of every byte.
	Fetch(ctx context.Context, t Target, w io.Writer, offset int64, progress interface{ Add(int64) }) (download.Result, error)
	// Jobs reports job progress to the server; nil offline.
	Jobs() Jobs
	// Root is version n of repo's ("image" or "director") root, for a
	// secondary whose trusted root is older than the vehicle's.
	Root(ctx context.Context, repo string, n int64) ([]byte, error)
}

// Target is an image as signed metadata describes it.
type Target struct {
	Path   string
	SHA256 string
	Length int64
	// Delta is set for a delta (its own download faults apply).
	Delta bool
	// Sealed is set for an encrypted image or delta: Path is then the
	// sealed file's name (under /repo/sealed/), SHA256 and Length its.
	Sealed bool
}

// Jobs hears job progress.
type Jobs interface {
	JobEvent(ctx context.Context, id string, e api.JobEvent) error
}

// server is the online source: both repositories and images from the
// vehicle's server, job events to it.
func (a *Agent) server() Source { return serverSource{a} }

type serverSource struct{ a *Agent }

func (s serverSource) Refresh(ctx context.Context) (images, directed *tufclient.Trusted, err error) {
	a := s.a
	image := &tufclient.Repo{Name: "image", Dir: a.V.ImageRepoDir(), MetadataURL: a.V.Server + "/repo", Client: a.Client, Log: a.Log, Now: a.Now}
	dir := &tufclient.Repo{Name: "director", Dir: a.V.DirectorRepoDir(), MetadataURL: a.V.Server + "/director/" + url.PathEscape(a.V.VIN),
		Client: a.Client, Log: a.Log, Now: a.Now}
	if a.API != nil {
		dir.Sign = a.API.SignGet
	}
	// The director first: whatever it names (a new image, a new delta)
	// was published before the image repository is read.
	if directed, err = dir.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	if images, err = image.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	return images, directed, nil
}

func (s serverSource) Fetch(ctx context.Context, t Target, w io.Writer, offset int64, progress interface{ Add(int64) }) (download.Result, error) {
	a := s.a
	body := a.Faults.Body(t.Length)
	if t.Delta {
		body = a.Faults.DeltaBody(t.Length)
	}
	url := a.V.Server + "/repo/targets/" + meta.ConsistentPath(t.Path, t.SHA256, true)
	if t.Sealed {
		url = a.V.Server + "/repo/sealed/" + t.Path
	}
	return download.Fetch(ctx, a.Client, download.Target{
		URL: url, Length: t.Length, Offset: offset, W: w,
		Body: body, Progress: progress,
	}, a.Policy)
}

func (s serverSource) Root(ctx context.Context, repo string, n int64) ([]byte, error) {
	a := s.a
	f := &download.MetadataFetcher{Ctx: ctx, Client: a.Client, Timeout: time.Minute}
	base := a.V.Server + "/repo"
	if repo == "director" {
		base = a.V.Server + "/director/" + url.PathEscape(a.V.VIN)
		if a.API != nil {
			f.Sign = a.API.SignGet
		}
	}
	return f.DownloadFile(fmt.Sprintf("%s/%d.root.json", base, n), maxRootSize, 0)
}

// maxRootSize bounds a root file (go-tuf's own limit).
const maxRootSize = 512000

func (s serverSource) Jobs() Jobs {
	if s.a.API == nil {
		return nil
	}
	return s.a.API
}

// bundle is the offline source: a USB bundle for this vehicle.
func (a *Agent) bundle(b *usb.Bundle) Source { return bundleSource{a: a, b: b} }

type bundleSource struct {
	a *Agent
	b *usb.Bundle
}

func (bundleSource) Jobs() Jobs { return nil }

func (s bundleSource) Root(_ context.Context, repo string, n int64) ([]byte, error) {
	return s.b.ReadFile(fmt.Sprintf("%s/%d.root.json", repo, n), maxRootSize)
}

// Refresh verifies a USB bundle's metadata, offline, in caches of its own
// (the online ones never see bundle metadata):
//   - the director's, from the vehicle's trusted director root, checked
//     now: it must be marked as made for a bundle (meta.USBBundle), for
//     this VIN, and not older than a bundle installed before;
//   - the image repository's, from the trusted image root, checked as of
//     the issue time the director signed: the bundle carries the timestamp
//     and snapshot that were current then, and the director pins that
//     timestamp by hash. Root and targets, signed offline, must also be
//     valid now, and targets not older than what the vehicle trusts online.
func (s bundleSource) Refresh(ctx context.Context) (images, directed *tufclient.Trusted, err error) {
	a, b := s.a, s.b
	refuse := func(format string, args ...any) (*tufclient.Trusted, *tufclient.Trusted, error) {
		return nil, nil, fmt.Errorf("%w: USB bundle: "+format+"; nothing installed", append([]any{client.ErrRefused}, args...)...)
	}
	dir := &tufclient.Repo{Name: "director (USB bundle)", Dir: a.V.DirectorUSBDir(), MetadataURL: usb.Scheme + "director", Fetcher: b, Log: a.Log, Now: a.Now}
	image := &tufclient.Repo{Name: "image (USB bundle)", Dir: a.V.ImageUSBDir(), MetadataURL: usb.Scheme + "image", Fetcher: b, Log: a.Log}
	if err := tufclient.SeedRoot(a.V.DirectorRepoDir(), dir.Dir); err != nil {
		return nil, nil, err
	}
	if err := tufclient.SeedRoot(a.V.ImageRepoDir(), image.Dir); err != nil {
		return nil, nil, err
	}
	if directed, err = dir.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	ub, err := meta.USBBundleOf(directed.TargetsCustom())
	switch {
	case err != nil:
		return refuse("%v", err)
	case ub.VIN != a.V.VIN:
		return refuse("made for VIN %s, this vehicle is %s", ub.VIN, a.V.VIN)
	case !a.now().Before(ub.ValidUntil):
		return refuse("it expired on %s; download a new one", ub.ValidUntil.Format(time.DateOnly))
	case !ub.IssuedAt.Equal(b.Manifest.IssuedAt):
		return refuse("its signed issue time %s is not the one it claims (%s)", ub.IssuedAt.Format(time.RFC3339), b.Manifest.IssuedAt.Format(time.RFC3339))
	}
	// The signed issue time is a time the vehicle can trust from now on.
	if st, err := a.V.LoadTimeState(); err == nil && ub.IssuedAt.After(st.Floor) {
		st.Floor = ub.IssuedAt
		a.logErr("raising the time floor to the bundle's issue time", a.V.SaveTimeState(st))
	}
	image.Now = func() time.Time { return ub.IssuedAt }
	if images, err = image.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	raw, err := b.ReadFile("image/timestamp.json", 1<<20)
	if err != nil {
		return refuse("no image timestamp: %v", err)
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != ub.ImageTimestampSHA256 || images.Version(metadata.TIMESTAMP) != ub.ImageTimestampVersion {
		return refuse("its image timestamp is not the one its director metadata pins (v%d)", ub.ImageTimestampVersion)
	}
	if what := images.Expired(a.now()); what != "" {
		return refuse("image repository %s; download a new bundle", what)
	}
	if online := tufclient.CachedVersion(a.V.ImageRepoDir(), metadata.TARGETS); images.Version(metadata.TARGETS) < online {
		return refuse("its image targets v%d are older than v%d, which this vehicle already trusts; download a new bundle",
			images.Version(metadata.TARGETS), online)
	}
	return images, directed, nil
}

// Fetch copies an image from the bundle, from offset, never reading past
// the signed length.
func (s bundleSource) Fetch(_ context.Context, t Target, w io.Writer, offset int64, progress interface{ Add(int64) }) (download.Result, error) {
	name := "targets/" + meta.ConsistentPath(t.Path, t.SHA256, false)
	if t.Sealed {
		name = "sealed/" + t.Path
	}
	f, err := s.b.OpenFile(name)
	if err != nil {
		if download.IsNotFound(err) {
			hint := " (a bundle with deltas carries full images only when made with ?full=true)"
			if t.Delta {
				hint = ""
			}
			return download.Result{}, fmt.Errorf("%w: the bundle lacks %s%s", download.ErrServerLength, name, hint)
		}
		return download.Result{}, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return download.Result{}, err
	}
	n, err := io.Copy(w, io.TeeReader(io.LimitReader(f, t.Length-offset), progressWriter{progress}))
	return download.Result{Transferred: n, Attempts: 1, Done: err == nil}, err
}

// progressWriter tells p of every byte written through it.
type progressWriter struct{ p interface{ Add(int64) } }

func (p progressWriter) Write(b []byte) (int, error) { p.p.Add(int64(len(b))); return len(b), nil }
