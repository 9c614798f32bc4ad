// Command release builds Roadsign's release artifacts (make release
// VERSION=x.y.z): for linux/amd64 and linux/arm64, a tarball of every
// program and .deb packages of the server and of the agent (binary,
// systemd unit, environment file, system user, state directory), and
// SHA256SUMS over them all. Builds are reproducible: -trimpath, no build
// ID, the version, commit and date stamped in, and archive entries in a
// fixed order with the commit's time.
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/gobuild"
)

//go:embed debian
var debian embed.FS

var (
	programs = []string{"roadsign-server", "roadsign-signer", "roadsign-agent", "roadsign-fleetsim", "roadsign-tuf-client", "roadsign-demo"}
	arches   = []string{"amd64", "arm64"}
	semver   = regexp.MustCompile(`^\d+\.\d+\.\d+$`)
)

// pkg is one .deb.
type pkg struct {
	name, program, unit, env, postinst, description, depends string
}

var pkgs = []pkg{
	{"roadsign-server", "roadsign-server", "roadsign-server.service", "server.env", "server.postinst",
		"Roadsign OTA server: TUF image repository, per-vehicle director, fleet API and consoles", "adduser, procps"},
	{"roadsign-agent", "roadsign-agent", "roadsign-agent.service", "agent.env", "agent.postinst",
		"Roadsign in-vehicle update agent: verifies with TUF/Uptane, A/B install, boot check, rollback", "adduser"},
}

type options struct {
	version, commit, out string
	date                 time.Time
}

func main() {
	var o options
	var epoch int64
	flag.StringVar(&o.version, "version", "", "release version x.y.z")
	flag.StringVar(&o.commit, "commit", "unknown", "commit stamped into the binaries")
	flag.Int64Var(&epoch, "date", 0, "build time, Unix seconds (SOURCE_DATE_EPOCH; default: now)")
	flag.StringVar(&o.out, "out", "dist", "output directory")
	flag.Parse()
	if epoch == 0 {
		epoch = time.Now().Unix()
	}
	o.date = time.Unix(epoch, 0).UTC()
	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

func run(o options, log io.Writer) error {
	if !semver.MatchString(o.version) {
		return fmt.Errorf("VERSION=%q: want x.y.z, e.g. make release VERSION=0.2.0", o.version)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "roadsign-release-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var files []string
	for _, arch := range arches {
		bin := filepath.Join(work, arch, "bin")
		fmt.Fprintf(log, "build %s for linux/%s\n", strings.Join(programs, ", "), arch)
		if err := build(o, arch, bin); err != nil {
			return err
		}
		name := fmt.Sprintf("roadsign_%s_linux_%s", o.version, arch)
		tgz := filepath.Join(o.out, name+".tar.gz")
		if err := tarball(tgz, name, bin, o.date); err != nil {
			return err
		}
		files = append(files, tgz)
		for _, p := range pkgs {
			deb, err := buildDeb(o, p, arch, filepath.Join(bin, p.program), filepath.Join(work, arch, "deb-"+p.name))
			if err != nil {
				return err
			}
			files = append(files, deb)
		}
	}
	return sums(filepath.Join(o.out, "SHA256SUMS"), files)
}

// build builds every program for arch into dir as they ship (static, the
// signer again with cgo where that brings PKCS#11 support).
func build(o options, arch, dir string) error {
	var pkgs []string
	for _, p := range programs {
		pkgs = append(pkgs, "./cmd/"+p)
	}
	ldflags := fmt.Sprintf("-s -w -buildid= -X github.com/roadsign/roadsign/internal/buildinfo.Version=%s "+
		"-X github.com/roadsign/roadsign/internal/buildinfo.Commit=%s -X github.com/roadsign/roadsign/internal/buildinfo.Date=%s",
		o.version, o.commit, o.date.Format(time.RFC3339))
	b := gobuild.Build{Env: []string{"GOOS=linux", "GOARCH=" + arch}, Flags: []string{"-buildvcs=false", "-ldflags", ldflags}}
	return b.Programs(dir, pkgs...)
}

// tarball writes dir's files as NAME/bin/FILE, sorted, owned by root,
// with mtime date, plus the README and docs.
func tarball(path, name, bin string, date time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	gz.ModTime = date
	tw := tar.NewWriter(gz)
	add := func(src, dst string, mode int64) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: dst, Mode: mode, Size: int64(len(b)), ModTime: date, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	}
	progs := append([]string(nil), programs...)
	sort.Strings(progs)
	for _, p := range progs {
		if err := add(filepath.Join(bin, p), name+"/bin/"+p, 0o755); err != nil {
			return err
		}
	}
	// The README and docs, and the firmware samples roadsign-demo runs on
	// (bin/roadsign-demo --bin bin --samples firmware-samples).
	for _, d := range shipped() {
		if err := add(d, name+"/"+filepath.ToSlash(d), 0o644); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return f.Close()
}

// shipped are the files besides the programs a tarball carries, sorted:
// the README, docs/ and the firmware samples.
func shipped() []string {
	docs, _ := filepath.Glob("docs/*.md")
	samples, _ := filepath.Glob("firmware-samples/*.img")
	out := append(append([]string{"README.md", "firmware-samples/samples.json"}, docs...), samples...)
	sort.Strings(out)
	return out
}

// copyright is every package's /usr/share/doc/NAME/copyright.
const copyright = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: roadsign
Comment: The README and the docs beside this file describe the programs.

Files: *
Copyright: the Roadsign developers
License: none chosen yet
 The Roadsign developers have not yet published the programs under a
 license; ask them before you redistribute these packages.
`

// buildDeb lays out the package tree and builds it with dpkg-deb.
func buildDeb(o options, p pkg, arch, binary, root string) (string, error) {
	emb := func(name string) []byte {
		b, err := debian.ReadFile("debian/" + name)
		if err != nil {
			panic(err) // embedded at build time
		}
		return b
	}
	prerm := strings.ReplaceAll(string(emb("prerm")), "UNIT", p.unit)
	bin, err := os.ReadFile(binary)
	if err != nil {
		return "", err
	}
	size := 0
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"usr/bin/" + p.program, bin, 0o755},
		{"lib/systemd/system/" + p.unit, emb(p.unit), 0o644},
		{"etc/roadsign/" + p.env, emb(p.env), 0o640},
		{"usr/share/doc/" + p.name + "/README.md", mustRead("README.md"), 0o644},
		{"usr/share/doc/" + p.name + "/copyright", []byte(copyright), 0o644},
		{"DEBIAN/postinst", emb(p.postinst), 0o755},
		{"DEBIAN/prerm", []byte(prerm), 0o755},
		{"DEBIAN/conffiles", []byte("/etc/roadsign/" + p.env + "\n"), 0o644},
	}
	// The README links into docs/: ship them beside it.
	docs, _ := filepath.Glob("docs/*.md")
	sort.Strings(docs)
	for _, d := range docs {
		files = append(files, struct {
			path string
			data []byte
			mode os.FileMode
		}{"usr/share/doc/" + p.name + "/" + filepath.ToSlash(d), mustRead(d), 0o644})
	}
	for _, f := range files {
		full := filepath.Join(root, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(full, f.data, f.mode); err != nil {
			return "", err
		}
		if err := os.Chmod(full, f.mode); err != nil { // past the umask
			return "", err
		}
		if !strings.HasPrefix(f.path, "DEBIAN/") {
			size += len(f.data)
		}
	}
	control := fmt.Sprintf(`Package: %s
Version: %s
Architecture: %s
Maintainer: Roadsign <roadsign@localhost>
Installed-Size: %d
Depends: %s
Section: admin
Priority: optional
Description: %s
 Part of Roadsign, open firmware updates for vehicles (Uptane and TUF,
 A/B installs, staged campaigns). See /usr/share/doc/%s/README.md and
 the docs/ beside it.
`, p.name, o.version, arch, (size+1023)/1024, p.depends, p.description, p.name)
	if err := os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		return "", err
	}
	// Every entry carries the release date, so the same commit builds the
	// same package.
	err = filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, o.date, o.date)
	})
	if err != nil {
		return "", err
	}
	out := filepath.Join(o.out, fmt.Sprintf("%s_%s_%s.deb", p.name, o.version, arch))
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(o.date.Unix(), 10))
	if b, err := cmd.CombinedOutput(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", errors.New("dpkg-deb is missing: apt-get install dpkg")
		}
		return "", fmt.Errorf("dpkg-deb %s: %v\n%s", out, err, b)
	}
	return out, nil
}

func mustRead(p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		panic(err)
	}
	return b
}

// sums writes SHA256SUMS in sha256sum's format.
func sums(path string, files []string) error {
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		h := sha256.New()
		r, err := os.Open(f)
		if err != nil {
			return err
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%x  %s\n", h.Sum(nil), filepath.Base(f))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
