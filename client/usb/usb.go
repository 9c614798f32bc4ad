// Package usb reads a USB update bundle: it unpacks the archive into a
// directory (refusing any entry that is not a plain file inside the
// bundle) and serves metadata and images from it with a fetcher that can
// never reach outside the bundle.
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
	cleanup  func()
}

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
func (b *Bundle) Close() { b.cleanup() }

func unpack(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return fmt.Errorf("%w: bundle: %v", client.ErrUsage, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
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

// OpenFile opens a plain file inside the bundle.
func (b *Bundle) OpenFile(name string) (*os.File, error) {
	rel, err := confine(name)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(b.Dir, rel)
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: 404, URL: Scheme + name}
	}
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: bundle path %q is not a plain file; nothing installed", client.ErrRefused, name)
	}
	return os.Open(p)
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
