package testsupport

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/fwimage"
	"github.com/roadsign/roadsign/internal/keys"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/internal/timeattest"
	"github.com/roadsign/roadsign/internal/vehicleauth"
)

// Uptane is an image repository and one VIN's director, each signed with
// keys of its own and served over HTTP the way roadsign-server serves
// them, with the vehicle API routes an agent calls. Unlike the real
// server it signs whatever a test asks, so tests can play a compromised
// director or mirror.
type Uptane struct {
	*httptest.Server
	VIN string

	t        testing.TB
	expires  time.Time
	image    *tufRepo
	director *tufRepo

	mu     sync.Mutex
	blobs  map[string][]byte // consistent target path -> bytes
	events []JobEvent
	// cancel answers job events of these job IDs with job_canceled.
	cancel map[string]bool
	// manifests counts check-ins; lastManifest is the last one's.
	manifests    int
	lastManifest vehicleauth.Manifest
	// refuseAuth, if set, is the error code the authorization handshake
	// answers with (403).
	refuseAuth string
	// targetLength overrides the served length of a target (a mirror
	// that serves more or fewer bytes than signed).
	targetLength map[string]int
	// sealedImages are the images kept only sealed (Seal), by target
	// path; sealedFiles their sealed bytes by name.
	sealedImages map[string]*sealedImage
	sealedFiles  map[string][]byte
}

// sealedImage is an image kept sealed for some ECUs.
type sealedImage struct {
	name, sha256, header string
	length               int64
	fileKey              []byte
	recipients           map[string][]byte // serial -> X25519 public key
}

// JobEvent is one job event an agent posted.
type JobEvent struct {
	Job, Kind, Message string
	// Installed is an update set's images by ECU serial, with succeeded.
	Installed map[string]string
}

type tufRepo struct {
	// time, the director's, signs time attestations (role "time").
	root, targets, snapshot, timestamp, time *keys.Key
	rootRaw                                  []byte
	targetsMeta                              *metadata.Metadata[metadata.TargetsType]
	files                                    map[string][]byte // N.targets.json, timestamp.json, ...
	version                                  int64
}

// NewUptane builds both repositories for vin (empty targets) and serves them.
func NewUptane(t testing.TB, vin string) *Uptane {
	t.Helper()
	u := &Uptane{VIN: vin, t: t, expires: time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second),
		blobs: map[string][]byte{}, cancel: map[string]bool{}, targetLength: map[string]int{},
		sealedImages: map[string]*sealedImage{}, sealedFiles: map[string][]byte{}}
	u.image, u.director = u.newRepo(false), u.newRepo(true)
	u.director.targetsMeta.Signed.UnrecognizedFields = map[string]any{"custom": map[string]any{"vin": vin}}
	u.Publish()
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *Uptane) newRepo(director bool) *tufRepo {
	dir := u.t.TempDir()
	gen := func(name string) *keys.Key {
		k, err := keys.Generate(filepath.Join(dir, name))
		if err != nil {
			u.t.Fatal(err)
		}
		return k
	}
	r := &tufRepo{root: gen("root"), targets: gen("targets"), snapshot: gen("snapshot"), timestamp: gen("timestamp"), files: map[string][]byte{}}
	root := metadata.Root(u.expires)
	roles := map[string]*keys.Key{metadata.ROOT: r.root, metadata.TARGETS: r.targets, metadata.SNAPSHOT: r.snapshot, metadata.TIMESTAMP: r.timestamp}
	if director {
		r.time = gen("time")
		root.Signed.Roles[timeattest.Role] = &metadata.Role{KeyIDs: []string{}, Threshold: 1}
		roles[timeattest.Role] = r.time
	}
	for role, k := range roles {
		if err := root.Signed.AddKey(k.Public, role); err != nil {
			u.t.Fatal(err)
		}
	}
	if err := meta.Sign(root, r.root); err != nil {
		u.t.Fatal(err)
	}
	raw, err := root.ToBytes(false)
	if err != nil {
		u.t.Fatal(err)
	}
	r.rootRaw, r.files["1.root.json"] = raw, raw
	r.targetsMeta = metadata.Targets(u.expires)
	r.targetsMeta.Signed.Targets = map[string]*metadata.TargetFiles{}
	return r
}

// ImageRoot and DirectorRoot are the roots a vehicle pins.
func (u *Uptane) ImageRoot() []byte    { return u.image.rootRaw }
func (u *Uptane) DirectorRoot() []byte { return u.director.rootRaw }

// Image is a firmware image: its header and signed custom metadata.
type Image struct {
	ECU, HardwareID, Version string
	ReleaseCounter           int64
	AllowDowngrade           bool
	// Unbootable images verify but fail their boot check.
	Unbootable bool
}

// ImageBytes is the image file for im (4 KiB).
func ImageBytes(t testing.TB, im Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := fwimage.Write(&b, fwimage.Spec{ECU: im.ECU, HardwareID: im.HardwareID, Version: im.Version, Size: 4096, Unbootable: im.Unbootable}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// AddImage lists im in the image repository under target path p and
// serves its bytes; Publish makes it visible.
func (u *Uptane) AddImage(p string, im Image) *metadata.TargetFiles {
	u.t.Helper()
	data := ImageBytes(u.t, im)
	sum := sha256.Sum256(data)
	c, _ := json.Marshal(meta.Custom{ECU: im.ECU, HardwareIDs: []string{im.HardwareID}, Version: im.Version,
		ReleaseCounter: im.ReleaseCounter, AllowDowngrade: im.AllowDowngrade})
	raw := json.RawMessage(c)
	tf := &metadata.TargetFiles{Length: int64(len(data)), Hashes: metadata.Hashes{"sha256": sum[:]}, Custom: &raw, Path: p}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.image.targetsMeta.Signed.Targets[p] = tf
	u.blobs[meta.ConsistentPath(p, hex.EncodeToString(sum[:]), false)] = data
	return tf
}

// Assign is one director target: the image at Path for these ECU serials
// (serial -> hardware ID), with the director's custom fields.
type Assign struct {
	Path      string
	ECUs      map[string]string
	JobID     string
	Downgrade bool
	Window    map[string]string
	// Length and SHA256, if set, replace the image repository's (a
	// director that disagrees with it).
	Length int64
	SHA256 []byte
}

// Direct replaces the director's targets with as (for the VIN given, ""
// for the Uptane's own); Publish signs them.
func (u *Uptane) Direct(vin string, as ...Assign) {
	u.t.Helper()
	if vin == "" {
		vin = u.VIN
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	files := map[string]*metadata.TargetFiles{}
	for _, a := range as {
		itf := u.image.targetsMeta.Signed.Targets[a.Path]
		tf := &metadata.TargetFiles{Path: a.Path, Length: a.Length, Hashes: metadata.Hashes{"sha256": a.SHA256}}
		if itf != nil && a.Length == 0 {
			tf.Length = itf.Length
		}
		if itf != nil && a.SHA256 == nil {
			tf.Hashes = itf.Hashes
		}
		ids := map[string]any{}
		for serial, hw := range a.ECUs {
			ids[serial] = map[string]string{"hardwareId": hw}
		}
		custom := map[string]any{"ecuIdentifiers": ids}
		if itf != nil { // as the real director: the image's type, version and counter
			if c, err := meta.TargetCustom(itf); err == nil {
				custom["ecuType"], custom["version"], custom["releaseCounter"] = c.ECU, c.Version, c.ReleaseCounter
			}
		}
		if a.JobID != "" {
			custom["jobId"] = a.JobID
		}
		if a.Downgrade {
			custom["downgrade"] = true
		}
		if a.Window != nil {
			custom["window"] = a.Window
		}
		if si := u.sealedImages[a.Path]; si != nil {
			enc := map[string]any{}
			for serial := range a.ECUs {
				pub, ok := si.recipients[serial]
				if !ok {
					continue
				}
				w, err := sealed.WrapKey(pub, si.fileKey, sealed.Binding{VIN: vin, Serial: serial, Target: a.Path, SealedSHA256: si.sha256})
				if err != nil {
					u.t.Fatal(err)
				}
				enc[serial] = map[string]any{"sealed": si.name, "sha256": si.sha256, "length": si.length, "header": si.header,
					"recipient": "test", "key": base64.StdEncoding.EncodeToString(w)}
			}
			custom["encrypted"] = enc
		}
		c, _ := json.Marshal(custom)
		raw := json.RawMessage(c)
		tf.Custom = &raw
		files[a.Path] = tf
	}
	u.director.targetsMeta.Signed.Targets = files
	u.director.targetsMeta.Signed.UnrecognizedFields = map[string]any{"custom": map[string]any{"vin": vin}}
}

// Seal keeps the image at target path p only sealed (internal/sealed,
// 1 KiB chunks), its file key wrapped by Direct for each serial of
// recipients (serial -> the ECU's X25519 encryption key), served at
// /repo/sealed/NAME. It returns the sealed file's name.
func (u *Uptane) Seal(p string, recipients map[string][]byte) string {
	u.t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	tf := u.image.targetsMeta.Signed.Targets[p]
	plain := u.blobs[meta.ConsistentPath(p, hex.EncodeToString(tf.Hashes["sha256"]), false)]
	key := sealed.NewFileKey()
	var out bytes.Buffer
	if _, err := sealed.Seal(&out, bytes.NewReader(plain), key, 1024); err != nil {
		u.t.Fatal(err)
	}
	b := out.Bytes()
	sum := sha256.Sum256(b)
	name := hex.EncodeToString(tf.Hashes["sha256"]) + ".0011223344556677"
	u.sealedFiles[name] = b
	u.sealedImages[p] = &sealedImage{name: name, sha256: hex.EncodeToString(sum[:]), header: hex.EncodeToString(b[:sealed.HeaderSize]),
		length: int64(len(b)), fileKey: key, recipients: recipients}
	return name
}

// DamageSealed flips one bit of the sealed file name at offset at.
func (u *Uptane) DamageSealed(name string, at int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	b := bytes.Clone(u.sealedFiles[name])
	b[at] ^= 0x08
	u.sealedFiles[name] = b
}

// Publish signs new targets, snapshot and timestamp versions of both
// repositories.
func (u *Uptane) Publish() {
	u.t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range []*tufRepo{u.image, u.director} {
		r.version++
		v := r.version
		r.targetsMeta.Signed.Version = v
		r.targetsMeta.Signed.Expires = u.expires
		r.targetsMeta.Signatures = nil
		if err := meta.Sign(r.targetsMeta, r.targets); err != nil {
			u.t.Fatal(err)
		}
		traw, err := r.targetsMeta.ToBytes(false)
		if err != nil {
			u.t.Fatal(err)
		}
		sraw, err := meta.SignSnapshot(v, v, u.expires, nil, r.snapshot)
		if err != nil {
			u.t.Fatal(err)
		}
		tsraw, err := meta.SignTimestamp(v, v, sraw, u.expires, nil, r.timestamp)
		if err != nil {
			u.t.Fatal(err)
		}
		r.files[fmt.Sprintf("%d.targets.json", v)] = traw
		r.files[fmt.Sprintf("%d.snapshot.json", v)] = sraw
		r.files["timestamp.json"] = tsraw
	}
}

// ExpireAt makes the metadata Publish signs from now on expire at t
// (truncated to the second).
func (u *Uptane) ExpireAt(t time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.expires = t.UTC().Truncate(time.Second)
}

// LastManifest is the manifest of the last check-in.
func (u *Uptane) LastManifest() vehicleauth.Manifest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastManifest
}

// Files are the metadata files repo ("director" or "image") serves, by
// name: what a primary forwards to its secondaries.
func (u *Uptane) Files(repo string) map[string][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.image
	if repo == "director" {
		r = u.director
	}
	out := make(map[string][]byte, len(r.files))
	for k, v := range r.files {
		out[k] = v
	}
	return out
}

// Blob is the image bytes served for target path p.
func (u *Uptane) Blob(p string) []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	tf := u.image.targetsMeta.Signed.Targets[p]
	if tf == nil {
		return nil
	}
	return u.blobs[meta.ConsistentPath(p, hex.EncodeToString(tf.Hashes["sha256"]), false)]
}

// RefuseAuth makes the authorization handshake answer 403 with code
// ("": authorize).
func (u *Uptane) RefuseAuth(code string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.refuseAuth = code
}

// ServeLength makes the mirror serve target p (its image repository
// path) with n bytes, whatever was signed (n < 0: as signed).
func (u *Uptane) ServeLength(p string, n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	tf := u.image.targetsMeta.Signed.Targets[p]
	name := meta.ConsistentPath(p, hex.EncodeToString(tf.Hashes["sha256"]), false)
	if n < 0 {
		delete(u.targetLength, name)
		return
	}
	u.targetLength[name] = n
}

// CancelJob makes the server answer events of job id with job_canceled.
func (u *Uptane) CancelJob(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cancel[id] = true
}

// Events are the job events posted so far.
func (u *Uptane) Events() []JobEvent {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]JobEvent(nil), u.events...)
}

// Manifests counts check-ins.
func (u *Uptane) Manifests() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.manifests
}

func (u *Uptane) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := r.URL.Path
	serveFile := func(files map[string][]byte, name string) {
		b, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}
	switch {
	case strings.HasPrefix(p, "/repo/targets/"):
		name := strings.TrimPrefix(p, "/repo/targets/")
		b, ok := u.blobs[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if n, ok := u.targetLength[name]; ok {
			b = append(b, make([]byte, max(n-len(b), 0))...)[:n]
		}
		http.ServeContent(w, r, path.Base(name), time.Time{}, bytes.NewReader(b))
	case strings.HasPrefix(p, "/repo/sealed/"):
		b, ok := u.sealedFiles[strings.TrimPrefix(p, "/repo/sealed/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "sealed", time.Time{}, bytes.NewReader(b))
	case strings.HasPrefix(p, "/repo/"):
		serveFile(u.image.files, strings.TrimPrefix(p, "/repo/"))
	case strings.HasPrefix(p, "/director/"+u.VIN+"/"):
		serveFile(u.director.files, strings.TrimPrefix(p, "/director/"+u.VIN+"/"))
	case strings.HasPrefix(p, "/api/v1/jobs/") && strings.HasSuffix(p, "/events"):
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/api/v1/jobs/"), "/events")
		var e struct {
			Kind, Message string
			Installed     map[string]string
		}
		json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&e)
		u.events = append(u.events, JobEvent{Job: id, Kind: e.Kind, Message: e.Message, Installed: e.Installed})
		if u.cancel[id] {
			writeError(w, http.StatusConflict, "job_canceled", "job "+id+" was canceled; abandon it")
			return
		}
		w.Write([]byte("{}"))
	case p == "/api/v1/vehicles/"+u.VIN+"/manifest":
		u.manifests++
		var sm vehicleauth.SignedManifest
		if json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&sm) == nil {
			json.Unmarshal(sm.Signed, &u.lastManifest)
		}
		w.WriteHeader(http.StatusNoContent)
	case p == "/api/v1/vehicles/"+u.VIN+"/time":
		var body struct{ Nonce string }
		json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body)
		att, err := timeattest.Sign(u.director.time.Private, u.director.time.ID, timeattest.Statement{VIN: u.VIN, Nonce: body.Nonce,
			Time: time.Now().UTC(), ValidSeconds: int64(timeattest.Validity / time.Second)})
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		json.NewEncoder(w).Encode(att)
	case p == "/api/v1/vehicles/"+u.VIN+"/auth" && u.refuseAuth != "":
		writeError(w, http.StatusForbidden, u.refuseAuth, "refused by the test")
	case p == "/api/v1/vehicles/"+u.VIN+"/auth":
		var body map[string]any
		json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body)
		if body["challenge"] == nil {
			w.Write([]byte(`{"challenge":"c"}`))
			return
		}
		w.Write([]byte(`{"token":"t","expiresAt":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`))
	default:
		http.Error(w, "no route "+strconv.Quote(p), http.StatusNotFound)
	}
}

// WriteBundle writes a USB bundle folder for the VIN into dir, as
// roadsign-server issues them: the image repository's current metadata
// (pinned by the director), director metadata marked for the bundle
// (version n, valid until until) and the directed images.
func (u *Uptane) WriteBundle(dir string, n int64, issued, until time.Time) {
	u.t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	write := func(name string, b []byte) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			u.t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			u.t.Fatal(err)
		}
	}
	iv := u.image.version
	for _, name := range []string{"1.root.json", "timestamp.json", fmt.Sprintf("%d.snapshot.json", iv), fmt.Sprintf("%d.targets.json", iv)} {
		write("image/"+name, u.image.files[name])
	}
	sum := sha256.Sum256(u.image.files["timestamp.json"])
	b := meta.USBBundle{VIN: u.VIN, IssuedAt: issued, ValidUntil: until, ImageTimestampVersion: iv, ImageTimestampSHA256: hex.EncodeToString(sum[:])}
	tm := metadata.Targets(until)
	tm.Signed.Version = n
	tm.Signed.Targets = u.director.targetsMeta.Signed.Targets
	tm.Signed.UnrecognizedFields = map[string]any{"custom": b.Custom()}
	if err := meta.Sign(tm, u.director.targets); err != nil {
		u.t.Fatal(err)
	}
	traw, err := tm.ToBytes(false)
	if err != nil {
		u.t.Fatal(err)
	}
	sraw, err := meta.SignSnapshot(n, n, until, b.Custom(), u.director.snapshot)
	if err != nil {
		u.t.Fatal(err)
	}
	tsraw, err := meta.SignTimestamp(n, n, sraw, until, b.Custom(), u.director.timestamp)
	if err != nil {
		u.t.Fatal(err)
	}
	write("director/1.root.json", u.director.rootRaw)
	write(fmt.Sprintf("director/%d.targets.json", n), traw)
	write(fmt.Sprintf("director/%d.snapshot.json", n), sraw)
	write("director/timestamp.json", tsraw)
	var images []string
	for p, tf := range tm.Signed.Targets {
		name := meta.ConsistentPath(p, hex.EncodeToString(tf.Hashes["sha256"]), false)
		write("targets/"+name, u.blobs[name])
		images = append(images, p)
	}
	mb, _ := json.Marshal(map[string]any{"vin": u.VIN, "issuedAt": issued, "validUntil": until, "images": images})
	write("bundle.json", mb)
}

// ImageFile writes the image file for im into a temporary folder and
// returns its path.
func ImageFile(t testing.TB, im Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), im.ECU+"-"+im.Version+".bin")
	if err := os.WriteFile(p, ImageBytes(t, im), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// OnlineKeys are five new online public keys, as roadsign-server init
// writes them to online-keys.json.
func OnlineKeys(t testing.TB) meta.OnlineKeys {
	t.Helper()
	dir := t.TempDir()
	gen := func(name string) *metadata.Key {
		k, err := keys.Generate(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return k.Public
	}
	var o meta.OnlineKeys
	o.Image.Snapshot, o.Image.Timestamp = gen("image-snapshot"), gen("image-timestamp")
	o.Director.Targets, o.Director.Snapshot, o.Director.Timestamp = gen("director-targets"), gen("director-snapshot"), gen("director-timestamp")
	return o
}

// writeError answers as roadsign-server does: {"error": {"code", "message"}}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}
