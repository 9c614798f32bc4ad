package repo_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/fsblob"
	"github.com/roadsign/roadsign/server/repo"
)

// FuzzPublish decodes publish uploads as the route does and hands them
// to a repository that already holds a published state: nothing the
// fuzzer makes without the offline keys may change what is served, and
// every refusal is the caller's fault (never an internal error).
func FuzzPublish(f *testing.F) {
	blobs, keys, dir := published(f)
	r, err := repo.New(blobs, keys, repo.Config{}, time.Now, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "repo", name))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	root, ts := read("1.root.json"), read("timestamp.json")
	targets := read("1.targets.json")
	f.Add([]byte(`{"imageRoots":[` + string(root) + `],"targets":` + string(targets) + `}`))
	f.Add([]byte(`{"imageRoots":[` + string(root) + `],"targets":` + strings.Replace(string(targets), `"version":1`, `"version":2`, 1) + `}`))
	f.Add([]byte(`{"imageRoots":[],"targets":null,"directorRoots":[{}]}`))
	f.Add([]byte(`{"targets":{"signed":{"_type":"targets","version":99},"signatures":[]}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req repo.PublishRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&req) != nil {
			return // the route answers 400 before the repository sees it
		}
		res, err := r.Publish(ctx, req)
		if err != nil {
			if e := server.ErrorOf(err); e.Kind == server.KindInternal {
				t.Fatalf("publish %q: internal error %v; want a refusal naming the problem", body, err)
			}
		} else if res.Changed {
			t.Fatalf("publish %q changed the repository without the offline keys: %+v", body, res)
		}
		if now := read("timestamp.json"); !bytes.Equal(now, ts) {
			t.Fatalf("publish %q re-signed the timestamp", body)
		}
	})
}

// FuzzUploadTarget: a target upload is stored only at a clean path named
// for its content's sha256, and only when the bytes match; any other name
// or content is refused and leaves nothing behind.
func FuzzUploadTarget(f *testing.F) {
	content := []byte("firmware")
	sum := sha256.Sum256(content)
	name := hex.EncodeToString(sum[:])
	f.Add("dcm/"+name+".dcm.img", content)
	f.Add("../"+name+".x", content)
	f.Add("dcm/"+name+".dcm.img", []byte("firmwarf"))
	f.Add("/abs/"+name+".x", content)
	f.Add("dcm//"+name+".x", content)
	f.Fuzz(func(t *testing.T, filePath string, body []byte) {
		dir := t.TempDir()
		blobs, err := fsblob.New(filepath.Join(dir, "blobs"))
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.New(blobs, nil, repo.Config{MaxTargetSize: 1 << 20}, time.Now, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		created, err := r.UploadTarget(context.Background(), filePath, nil, bytes.NewReader(body), int64(len(body)))
		sum := sha256.Sum256(body)
		var stored []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				stored = append(stored, p)
			}
			return nil
		})
		if err != nil || !created {
			if len(stored) != 0 && err != nil {
				t.Fatalf("refused upload of %q left %v", filePath, stored)
			}
			return
		}
		want := filepath.Join(dir, "blobs", "repo", "targets", filepath.FromSlash(filePath))
		if len(stored) != 1 || stored[0] != want {
			t.Fatalf("upload of %q stored %v, want only %s", filePath, stored, want)
		}
		if !strings.HasPrefix(filepath.Base(filePath), hex.EncodeToString(sum[:])+".") {
			t.Fatalf("upload of %q stored content whose sha256 is %x", filePath, sum)
		}
	})
}
