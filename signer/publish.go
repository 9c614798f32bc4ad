package signer

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/roadsign/roadsign/internal/errcode"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/progress"
	"github.com/roadsign/roadsign/internal/tlsconf"
)

// PublishOptions say where to publish.
type PublishOptions struct {
	Server string
	Token  string
	// Progress receives upload progress bars (drawn only on a terminal).
	Progress io.Writer
	Client   *http.Client
}

// PublishResult says what a publish did.
type PublishResult struct {
	Uploaded      int   `json:"uploaded"`
	UploadedBytes int64 `json:"uploadedBytes"`
	AlreadyThere  int   `json:"alreadyThere"`
	Changed       bool  `json:"changed"`
	RootVersion   int64 `json:"rootVersion"`
	Targets       int64 `json:"targetsVersion"`
	Snapshot      int64 `json:"snapshotVersion"`
	Timestamp     int64 `json:"timestampVersion"`
}

// NewHTTPClient returns a client with connection and header timeouts but
// no whole-request timeout, which would kill a large upload or download.
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 5 * time.Minute, // the server verifies a large upload before it answers
		MaxIdleConnsPerHost:   4,
		ForceAttemptHTTP2:     true,
	}}
}

// Publish uploads every target file the server lacks (streamed, with
// progress), then the root chains and targets metadata. Running it twice
// uploads nothing and changes nothing the second time.
func (w *Workspace) Publish(ctx context.Context, o PublishOptions) (PublishResult, error) {
	if o.Server == "" || o.Token == "" {
		return PublishResult{}, fmt.Errorf("%w: publish needs --server URL and --token TOKEN", ErrUsage)
	}
	if o.Client == nil {
		o.Client = NewHTTPClient()
	}
	base := strings.TrimRight(o.Server, "/")
	// Staged multi-party changes become current only at a threshold of
	// signatures, before anything is uploaded.
	if err := w.promoteStaged(); err != nil {
		return PublishResult{}, err
	}
	t, raw, err := w.Targets()
	if err != nil {
		return PublishResult{}, err
	}
	var res PublishResult
	paths := make([]string, 0, len(t.Signed.Targets))
	for p := range t.Signed.Targets {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		tf := t.Signed.Targets[p]
		local, ok := w.State.TargetFiles[p]
		if !ok {
			return res, fmt.Errorf("%w: target %s is signed but the workspace does not know its file; add it again", ErrUsage, p)
		}
		rel := meta.ConsistentPath(p, hex.EncodeToString(tf.Hashes["sha256"]), true)
		there, err := exists(ctx, o.Client, base+"/repo/targets/"+rel, tf.Length)
		if err != nil {
			return res, err
		}
		if there {
			res.AlreadyThere++
			continue
		}
		var hw []string
		if c, err := meta.TargetCustom(tf); err == nil {
			hw = c.HardwareIDs
		}
		if err := upload(ctx, o, base+"/api/v1/repo/targets/"+rel, local, p, hw, tf.Length); err != nil {
			return res, err
		}
		res.Uploaded++
		res.UploadedBytes += tf.Length
	}

	body := map[string]any{"targets": json.RawMessage(raw)}
	for key, repoName := range map[string]string{"imageRoots": Image, "directorRoots": Director} {
		chain, err := w.RootChain(repoName)
		if err != nil {
			return res, err
		}
		msgs := make([]json.RawMessage, len(chain))
		for i, c := range chain {
			msgs[i] = c
		}
		body[key] = msgs
	}
	b, err := json.Marshal(body)
	if err != nil {
		return res, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/repo/publish", bytes.NewReader(b))
	if err != nil {
		return res, fmt.Errorf("%w: --server %q: %v", ErrUsage, o.Server, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+o.Token)
	resp, err := o.Client.Do(req)
	if err != nil {
		return res, fmt.Errorf("publish metadata to %s: %w", base, tlsRefused(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return res, serverError("publish metadata", resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res, fmt.Errorf("publish metadata: bad answer from server: %w", err)
	}
	return res, nil
}

func exists(ctx context.Context, c *http.Client, target string, length int64) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, fmt.Errorf("check %s: %w", target, tlsRefused(err))
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.ContentLength == length, nil
	case http.StatusNotFound:
		return false, nil
	case http.StatusForbidden:
		// Kept only encrypted: uploaded, never served in clear.
		if n := resp.Header.Get("X-Roadsign-Encrypted"); n != "" {
			return n == strconv.FormatInt(length, 10), nil
		}
	}
	if resp.StatusCode == http.StatusBadRequest && resp.Request.URL.Scheme == "http" {
		// The server never refuses a HEAD for a target as malformed: this
		// is a TLS port answering plain HTTP (its reason is in a body HEAD
		// does not get).
		return false, fmt.Errorf("check %s: server answered %s: the server speaks HTTPS on this port: use https:// in --server", target, resp.Status)
	}
	return false, fmt.Errorf("check %s: server answered %s", target, resp.Status)
}

// upload sends a target file, saying which hardware it is for: a server
// that keeps that hardware's images encrypted seals it as it arrives.
func upload(ctx context.Context, o PublishOptions, target, local, targetPath string, hardwareIDs []string, length int64) error {
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("%w: target %s: %v; add it again from its new location", ErrUsage, targetPath, err)
	}
	defer f.Close()
	var body io.Reader = f
	var bar *progress.Bar
	if o.Progress != nil {
		bar = progress.New(o.Progress, "uploading "+path.Base(targetPath), length, 0)
		body = io.TeeReader(f, bar)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, target, body)
	if err != nil {
		return err
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+o.Token)
	if len(hardwareIDs) > 0 {
		req.Header.Set("X-Roadsign-Hardware-Ids", strings.Join(hardwareIDs, ","))
	}
	resp, err := o.Client.Do(req)
	bar.Finish()
	if err != nil {
		return fmt.Errorf("upload %s: %w", targetPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		err := serverError("upload "+targetPath, resp)
		if strings.Contains(err.Error(), "hash_mismatch") {
			return fmt.Errorf("%w (the file %s changed since it was added; add it under a new name)", err, local)
		}
		return err
	}
	return nil
}

// serverError turns an error answer into one line naming what failed.
func serverError(what string, resp *http.Response) error {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if tlsconf.IsPlainToTLS(resp.StatusCode, b) {
		return fmt.Errorf("%s: the server speaks HTTPS on this port: use https:// in --server", what)
	}
	if json.Unmarshal(b, &e) != nil || e.Error.Message == "" {
		return fmt.Errorf("%s: server answered %s", what, resp.Status)
	}
	err := fmt.Errorf("%s: server refused (%s, %s): %s", what, resp.Status, e.Error.Code, e.Error.Message)
	if e.Error.Code == errcode.BadSignature || e.Error.Code == errcode.Expired {
		return fmt.Errorf("%w: %v", ErrSecurity, err)
	}
	return err
}

// tlsRefused marks a server certificate that does not verify as a
// security refusal (exit 3), not a network failure.
func tlsRefused(err error) error {
	if tlsconf.IsVerifyError(err) {
		return fmt.Errorf("%w: %s", ErrSecurity, tlsconf.Refusal(err, "give the server's CA certificate with --ca-cert FILE (another one if you gave one)"))
	}
	return err
}
