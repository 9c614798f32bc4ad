// Package download fetches over HTTP for the agent: small metadata files
// for go-tuf (with a context, caps and real 404s) and large target images,
// streamed with Range resume, bounded retries and backoff.
package download

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/internal/tlsconf"
)

// NewHTTPClient returns a client with connection and header timeouts and
// no whole-request timeout (which would kill a long image download).
func NewHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ForceAttemptHTTP2:     true,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}}
}

// MetadataFetcher implements go-tuf's fetcher.Fetcher. go-tuf passes no
// context, so the fetcher carries the update cycle's.
type MetadataFetcher struct {
	Ctx    context.Context
	Client *http.Client
	// Timeout bounds one metadata download (they are small).
	Timeout time.Duration
	// Sign, if set, adds credentials to each request.
	Sign func(*http.Request)
}

// DownloadFile implements fetcher.Fetcher.
func (f *MetadataFetcher) DownloadFile(url string, maxLength int64, _ time.Duration) ([]byte, error) {
	ctx := f.Ctx
	if f.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if f.Sign != nil {
		f.Sign(req)
	}
	resp, err := f.Client.Do(req)
	if tlsconf.IsVerifyError(err) {
		// Not a network failure: someone answers with a certificate that
		// does not chain to the CA the vehicle trusts.
		return nil, &metadata.ErrRepository{Msg: fmt.Sprintf("fetch %s: %s", url, TLSRefusal(err))}
	}
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: fmt.Sprintf("fetch %s: %v", url, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, serverError(resp, url)
	}
	if resp.ContentLength > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is %d bytes, more than the %d allowed", url, resp.ContentLength, maxLength)}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: fmt.Sprintf("read %s: %v", url, err)}
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is more than the %d bytes allowed", url, maxLength)}
	}
	// Refused before go-tuf sees (and caches) it: long-lived metadata
	// made for a USB bundle, replayed online, could freeze the vehicle.
	if meta.IsUSBBundleMetadata(b) {
		return nil, &metadata.ErrRepository{Msg: fmt.Sprintf("%s is metadata made for a USB bundle, which is never trusted online (a replayed bundle?)", url)}
	}
	return b, nil
}

// TLSRefusal says why a server certificate was refused and what to do.
func TLSRefusal(err error) string {
	return tlsconf.Refusal(err, "give the vehicle the server's CA certificate: roadsign-agent trust-ca --state DIR --ca-cert FILE (or --ca-cert at init)")
}

// ServerError is an HTTP error answer with the server's code and message
// (clock_skew, unknown_vehicle_key, ...). It unwraps to go-tuf's
// ErrDownloadHTTP, so a 404 still ends the root walk.
type ServerError struct {
	HTTP          *metadata.ErrDownloadHTTP
	Code, Message string
}

func (e *ServerError) Error() string {
	if e.Code == "" {
		return e.HTTP.Error()
	}
	return fmt.Sprintf("server answered %d %s: %s", e.HTTP.StatusCode, e.Code, e.Message)
}

func (e *ServerError) Unwrap() error { return e.HTTP }

// serverError reads a failed response's JSON error, if it has one.
func serverError(resp *http.Response, url string) error {
	e := &ServerError{HTTP: &metadata.ErrDownloadHTTP{StatusCode: resp.StatusCode, URL: url}}
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 4096)); err == nil && json.Unmarshal(b, &body) == nil {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	return e
}

// IsUnreachable reports whether err means the server could not be
// reached or is failing (5xx): worth backing off and retrying later.
func IsUnreachable(err error) bool {
	var h *metadata.ErrDownloadHTTP
	if errors.As(err, &h) {
		return h.StatusCode >= 500
	}
	return errors.Is(err, &metadata.ErrDownload{})
}

// IsNotFound reports whether err is an HTTP 404 from a fetch.
func IsNotFound(err error) bool {
	var h *metadata.ErrDownloadHTTP
	return errors.As(err, &h) && h.StatusCode == http.StatusNotFound
}
