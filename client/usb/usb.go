// Package usb reads a USB update bundle: it unpacks the archive into a
// directory (refusing any entry that is not a plain file inside the
// bundle, and archives with too many entries, oversized metadata or more
// bytes than the disk has room for) and serves metadata and images from
// it through an os.Root, so no path or symlink reaches outside it.
package usb

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/client"
)

// Scheme prefixes the bundle "URLs" the TUF updater asks the fetcher for.
const Scheme = "usb://"

// Manifest is bundle.json.
type Manifest struct {
	VIN        string    `json:"vin"`
	IssuedAt   time.Time `json:"issuedAt"`
	ValidUntil time.Time `json:"validUntil"`
	Images     []string  `json:"images"`
}

// Bundle is an unpacked bundle directory.
type Bundle struct {
	Dir      string
	Manifest Manifest
	root     *os.Root
	cleanup  func()
}

// Archive limits: a bundle holds a README, bundle.json, two root chains,
// six metadata files and an image per ECU.
const (
	maxEntries      = 1024
	maxMetadataSize = 16 << 20 // any entry outside targets/
	maxBundleSize   = 64 << 30
)

// Open opens a bundle: a directory, or a tar archive unpacked into a new
// directory under scratch. Close removes what Open unpacked.
func Open(src, scratch string) (*Bundle, error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("%w: bundle: %v", client.ErrUsage, err)
	}
	b := &Bundle{Dir: src, cleanup: func() {}}
	if !st.IsDir() {
		dir, err := os.MkdirTemp(scratch, "usb-bundle-")
		if err != nil {
			return nil, err
		}
		b.Dir, b.cleanup = dir, func() { os.RemoveAll(dir) }
		if err := unpack(src, dir); err != nil {
			b.cleanup()
			return nil, err
		}
	}
	if b.root, err = os.OpenRoot(b.Dir); err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: bundle: %v", client.ErrUsage, err)
	}
	raw, err := b.ReadFile("bundle.json", 1<<20)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: not a Roadsign USB bundle (no readable bundle.json): %v; nothing installed", client.ErrRefused, err)
	}
	if err := json.Unmarshal(raw, &b.Manifest); err != nil {
		b.Close()
		return nil, fmt.Errorf("%w: bundle.json is damaged: %v; nothing installed", client.ErrRefused, err)
	}
	return b, nil
}

// Close removes an unpacked archive.
func (b *Bundle) Close() {
	if b.root != nil {
		b.root.Close()
	}
	b.cleanup()
}

func unpack(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return fmt.Errorf("%w: bundle: %v", client.ErrUsage, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var entries int
	var total int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: bundle archive is damaged: %v; nothing installed", client.ErrRefused, err)
		}
		name, err := confine(h.Name)
		if err != nil {
			return err
		}
		entries++
		total += max(h.Size, 0)
		switch {
		case entries > maxEntries:
			return fmt.Errorf("%w: bundle archive has more than %d entries; nothing installed", client.ErrRefused, maxEntries)
		case h.Size > maxMetadataSize && !strings.HasPrefix(filepath.ToSlash(name), "targets/"):
			return fmt.Errorf("%w: bundle entry %q is %d bytes, more than metadata may be; nothing installed", client.ErrRefused, h.Name, h.Size)
		case total > maxBundleSize:
			return fmt.Errorf("%w: bundle archive holds more than %d GiB; nothing installed", client.ErrRefused, maxBundleSize>>30)
		}
		if free, ok := freeBytes(dir); ok && h.Size > free {
			return fmt.Errorf("bundle entry %q needs %d bytes and only %d are free where it is unpacked (%s); free space and retry", h.Name, h.Size, free, dir)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
				return err
			}
			continue
		case tar.TypeReg:
		default:
			return fmt.Errorf("%w: bundle entry %q is not a plain file (links and devices are refused); nothing installed", client.ErrRefused, h.Name)
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("%w: bundle entry %q: %v; nothing installed", client.ErrRefused, h.Name, err)
		}
		_, err = io.CopyN(out, tr, h.Size)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("unpack %s: %w", h.Name, err)
		}
	}
}

// confine cleans a bundle-relative name and refuses one that would leave
// the bundle.
func confine(name string) (string, error) {
	clean := path.Clean(strings.ReplaceAll(name, "\\", "/"))
	if clean == "." || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(name, "\x00") {
		return "", fmt.Errorf("%w: bundle path %q escapes the bundle; nothing installed", client.ErrRefused, name)
	}
	return filepath.FromSlash(clean), nil
}

// ReadFile returns a bundle file, at most limit bytes, refusing links.
func (b *Bundle) ReadFile(name string, limit int64) ([]byte, error) {
	f, err := b.OpenFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is more than the %d bytes allowed", name, limit)}
	}
	return data, nil
}

// OpenFile opens a plain file inside the bundle. The bundle's os.Root
// refuses any path, or symlink on the way, that leaves it; the file itself
// must not be a link.
func (b *Bundle) OpenFile(name string) (*os.File, error) {
	rel, err := confine(name)
	if err != nil {
		return nil, err
	}
	st, err := b.root.Lstat(rel)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: 404, URL: Scheme + name}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: bundle path %q: %v; nothing installed", client.ErrRefused, name, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: bundle path %q is not a plain file; nothing installed", client.ErrRefused, name)
	}
	f, err := b.root.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("%w: bundle path %q: %v; nothing installed", client.ErrRefused, name, err)
	}
	return f, nil
}

// freeBytes is the space free for an unprivileged writer at dir.
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// DownloadFile implements go-tuf's fetcher.Fetcher over the bundle: a
// missing file is a 404 (it ends the root walk), and maxLength is enforced.
func (b *Bundle) DownloadFile(url string, maxLength int64, _ time.Duration) ([]byte, error) {
	name, ok := strings.CutPrefix(url, Scheme)
	if !ok {
		return nil, fmt.Errorf("%w: bundle fetcher asked for %q", client.ErrRefused, url)
	}
	return b.ReadFile(name, maxLength)
}
