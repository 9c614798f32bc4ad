package secondary

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/tufclient"
	"github.com/roadsign/roadsign/internal/meta"
)

// assignment is the image the director signed for this ECU, once
// verified: what its slot may take, byte for byte.
type assignment struct {
	Path      string
	Length    int64
	SHA256    string
	Version   string
	Counter   int64
	JobID     string
	Downgrade bool
}

// directorCustom is the director's custom metadata on a target.
type directorCustom struct {
	ECUIdentifiers map[string]struct {
		HardwareID string `json:"hardwareId"`
	} `json:"ecuIdentifiers"`
	ECUType        string `json:"ecuType"`
	Version        string `json:"version"`
	ReleaseCounter int64  `json:"releaseCounter"`
	JobID          string `json:"jobId"`
	Downgrade      bool   `json:"downgrade"`
}

// refused is a verification failure: reported as an attack.
func refused(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{client.ErrRefused}, args...)...)
}

// asRefusal is a verification error as a refusal (once).
func asRefusal(err error) error {
	if errors.Is(err, client.ErrRefused) {
		return err
	}
	return refused("%v", err)
}

// verify checks an offer's metadata with this ECU's own roots and finds
// its assignment (nil: nothing assigned to this serial).
func (s *State) verify(ctx context.Context, director, image map[string][]byte) (*assignment, error) {
	if s.Verification == Full {
		return s.verifyFull(ctx, director, image)
	}
	return s.verifyPartial(director)
}

// verifyFull runs the TUF client workflow on both repositories over what
// the primary sent, from this ECU's own caches (so its rollback
// protection is its own), and holds the director's entry for this serial
// to the image repository's, as the primary does.
func (s *State) verifyFull(ctx context.Context, director, image map[string][]byte) (*assignment, error) {
	dir := &tufclient.Repo{Name: "director (from the primary)", Dir: s.DirectorDir(), MetadataURL: offerScheme + "director",
		Fetcher: offerFetcher{prefix: offerScheme + "director/", files: director}, Now: s.now}
	directed, err := dir.Refresh(ctx)
	if err != nil {
		return nil, asRefusal(err)
	}
	img := &tufclient.Repo{Name: "image (from the primary)", Dir: s.ImageDir(), MetadataURL: offerScheme + "image",
		Fetcher: offerFetcher{prefix: offerScheme + "image/", files: image}, Now: s.now}
	images, err := img.Refresh(ctx)
	if err != nil {
		return nil, asRefusal(err)
	}
	if v, _ := directed.TargetsCustom()["vin"].(string); v != s.VIN {
		return nil, refused("director metadata is for VIN %q, this ECU is in %s", v, s.VIN)
	}
	path, dtf, dc, err := s.ownEntry(directed.Targets())
	if err != nil || dtf == nil {
		return nil, err
	}
	itf, err := images.TargetInfo(path)
	if err != nil {
		return nil, refused("target %s is not in the image repository (%v)", path, err)
	}
	if itf.Length != dtf.Length || hex.EncodeToString(itf.Hashes["sha256"]) != hex.EncodeToString(dtf.Hashes["sha256"]) {
		return nil, refused("target %s: length or sha256 differ between director and image repository", path)
	}
	ic, err := meta.TargetCustom(itf)
	if err != nil {
		return nil, refused("target %s: %v", path, err)
	}
	if !ic.Supports(s.Config.ECU.Type, s.Config.ECU.HardwareID) {
		return nil, refused("target %s is a %s image for %v, this ECU is a %s %s", path, ic.ECU, ic.HardwareIDs, s.Config.ECU.Type, s.Config.ECU.HardwareID)
	}
	a := &assignment{Path: path, Length: itf.Length, SHA256: hex.EncodeToString(itf.Hashes["sha256"]), Version: ic.Version,
		Counter: ic.ReleaseCounter, JobID: dc.JobID, Downgrade: dc.Downgrade && ic.AllowDowngrade}
	return a, s.checkCounter(a)
}

// verifyPartial is Uptane's partial verification (tufclient's
// DirectorTargets): the director's root chain from this ECU's pinned
// root, the newest director targets the primary sent, signed by a
// threshold of that root's targets keys, unexpired, not older than the
// last it accepted, naming this VIN; then this serial's entry.
func (s *State) verifyPartial(director map[string][]byte) (*assignment, error) {
	t, err := tufclient.DirectorTargets(s.DirectorDir(), func(name string) ([]byte, error) {
		if name == "targets.json" {
			name, _ = latestTargets(director)
		}
		if b, ok := director[name]; ok {
			return b, nil
		}
		return nil, tufclient.ErrMissing
	}, s.now())
	if err != nil {
		return nil, asRefusal(err)
	}
	if v, _ := t.Signed.UnrecognizedFields["custom"].(map[string]any)["vin"].(string); v != s.VIN {
		return nil, refused("director metadata is for VIN %q, this ECU is in %s", v, s.VIN)
	}
	path, dtf, dc, err := s.ownEntry(t.Signed.Targets)
	if err != nil || dtf == nil {
		return nil, err
	}
	if dc.ECUType != s.Config.ECU.Type {
		return nil, refused("target %s is a %s image, this ECU is a %s", path, dc.ECUType, s.Config.ECU.Type)
	}
	sum := hex.EncodeToString(dtf.Hashes["sha256"])
	if len(sum) != 64 {
		return nil, refused("target %s has no sha256 in the director's signed metadata", path)
	}
	a := &assignment{Path: path, Length: dtf.Length, SHA256: sum, Version: dc.Version, Counter: dc.ReleaseCounter, JobID: dc.JobID, Downgrade: dc.Downgrade}
	return a, s.checkCounter(a)
}

// latestTargets is the director targets file with the highest version
// in an offer.
func latestTargets(files map[string][]byte) (string, []byte) {
	var names []string
	for name := range files {
		if v, ok := strings.CutSuffix(name, ".targets.json"); ok {
			if _, err := strconv.ParseInt(v, 10, 64); err == nil {
				names = append(names, name)
			}
		}
	}
	if len(names) == 0 {
		return "targets.json", files["targets.json"]
	}
	sort.Slice(names, func(i, j int) bool {
		a, _ := strconv.ParseInt(strings.TrimSuffix(names[i], ".targets.json"), 10, 64)
		b, _ := strconv.ParseInt(strings.TrimSuffix(names[j], ".targets.json"), 10, 64)
		return a < b
	})
	last := names[len(names)-1]
	return last, files[last]
}

// ownEntry finds the director target naming this ECU's serial: none is
// nothing assigned; more than one, or one for other hardware, is refused.
func (s *State) ownEntry(targets map[string]*metadata.TargetFiles) (string, *metadata.TargetFiles, directorCustom, error) {
	var path string
	var found *metadata.TargetFiles
	var custom directorCustom
	for p, tf := range targets {
		var dc directorCustom
		if tf.Custom == nil || json.Unmarshal(*tf.Custom, &dc) != nil {
			continue
		}
		id, ok := dc.ECUIdentifiers[s.Config.ECU.Serial]
		if !ok {
			continue
		}
		if found != nil {
			return "", nil, custom, refused("ECU serial %s is assigned twice (%s and %s)", s.Config.ECU.Serial, path, p)
		}
		if id.HardwareID != s.Config.ECU.HardwareID {
			return "", nil, custom, refused("target %s is for hardware %s, this ECU is %s", p, id.HardwareID, s.Config.ECU.HardwareID)
		}
		path, found, custom = p, tf, dc
	}
	return path, found, custom, nil
}

// checkCounter refuses an image older than the one the ECU runs, unless
// it is a permitted downgrade.
func (s *State) checkCounter(a *assignment) error {
	rec, err := s.ECU().LoadRecord()
	if err != nil {
		return err
	}
	if cur := rec.Slots[rec.Active]; cur != nil && a.Counter < cur.ReleaseCounter && !a.Downgrade {
		return refused("target %s has release counter %d, lower than the installed %d (rollback refused)", a.Path, a.Counter, cur.ReleaseCounter)
	}
	return nil
}

// offerScheme names the metadata the primary sent, for go-tuf's updater.
const offerScheme = "offer://"

// offerFetcher serves the files of an offer to go-tuf: a missing file is
// a 404 (it ends the root walk), and maxLength is enforced.
type offerFetcher struct {
	prefix string
	files  map[string][]byte
}

// DownloadFile implements go-tuf's fetcher.Fetcher.
func (f offerFetcher) DownloadFile(url string, maxLength int64, _ time.Duration) ([]byte, error) {
	name, ok := strings.CutPrefix(url, f.prefix)
	if !ok {
		return nil, fmt.Errorf("the offer has no %s", url)
	}
	b, ok := f.files[name]
	if !ok {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: 404, URL: url}
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is %d bytes, more than %d", name, len(b), maxLength)}
	}
	return b, nil
}
