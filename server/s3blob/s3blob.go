// Package s3blob is a BlobStore on an S3-compatible object store through
// minio-go: the fleet-scale backend shared by several server replicas.
package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/roadsign/roadsign/server"
)

// partSize bounds the memory of one upload: minio-go buffers one part.
const partSize = 16 << 20

// Store keeps blobs as objects in one bucket, under an optional prefix.
type Store struct {
	client *minio.Client
	bucket string
	prefix string
}

var _ server.BlobStore = (*Store)(nil)

// Config says where the store is.
type Config struct {
	Endpoint  string // host:port
	Bucket    string
	Prefix    string // optional key prefix, e.g. "roadsign/"
	Region    string
	Secure    bool
	AccessKey string
	SecretKey string
}

// ParseURL reads s3://BUCKET[/PREFIX]?endpoint=HOST:PORT&secure=false&region=R.
// Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, looked
// up with getenv.
func ParseURL(raw string, getenv func(string) string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return Config{}, fmt.Errorf("blob URL %q: want s3://BUCKET?endpoint=HOST:PORT&secure=false", raw)
	}
	q := u.Query()
	c := Config{
		Endpoint:  q.Get("endpoint"),
		Bucket:    u.Host,
		Region:    q.Get("region"),
		Secure:    true,
		AccessKey: getenv("AWS_ACCESS_KEY_ID"),
		SecretKey: getenv("AWS_SECRET_ACCESS_KEY"),
	}
	if p := u.Path; len(p) > 1 {
		c.Prefix = p[1:]
		if c.Prefix[len(c.Prefix)-1] != '/' {
			c.Prefix += "/"
		}
	}
	if c.Endpoint == "" {
		return Config{}, fmt.Errorf("blob URL %q: missing endpoint=HOST:PORT", raw)
	}
	if s := q.Get("secure"); s != "" {
		if c.Secure, err = strconv.ParseBool(s); err != nil {
			return Config{}, fmt.Errorf("blob URL %q: secure=%q is not true or false", raw, s)
		}
	}
	return c, nil
}

// New connects to the store and creates the bucket if it does not exist.
func New(ctx context.Context, c Config) (*Store, error) {
	client, err := minio.New(c.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(c.AccessKey, c.SecretKey, ""),
		Secure: c.Secure,
		Region: c.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", c.Endpoint, err)
	}
	s := &Store{client: client, bucket: c.Bucket, prefix: c.Prefix}
	ok, err := client.BucketExists(ctx, c.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %s at %s: %w", c.Bucket, c.Endpoint, err)
	}
	if !ok {
		if err := client.MakeBucket(ctx, c.Bucket, minio.MakeBucketOptions{Region: c.Region}); err != nil {
			return nil, fmt.Errorf("create s3 bucket %s: %w", c.Bucket, err)
		}
	}
	return s, nil
}

func (s *Store) object(key string) (string, error) {
	if err := server.CheckBlobKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// Put implements server.BlobStore. S3 makes an object visible only when
// its upload completes, so a failed reader leaves nothing behind.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	_, err = s.client.PutObject(ctx, s.bucket, obj, r, size, minio.PutObjectOptions{
		PartSize:    partSize,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Open implements server.BlobStore. minio-go's GetObject is lazy, so it
// stats first: a missing object must be known before a 200 is sent.
func (s *Store) Open(ctx context.Context, key string) (io.ReadSeekCloser, server.BlobInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, server.BlobInfo{}, err
	}
	o, err := s.client.GetObject(ctx, s.bucket, obj, minio.GetObjectOptions{})
	if err != nil {
		return nil, server.BlobInfo{}, mapErr(key, err)
	}
	st, err := o.Stat()
	if err != nil {
		o.Close()
		return nil, server.BlobInfo{}, mapErr(key, err)
	}
	return o, server.BlobInfo{Size: st.Size, ModTime: st.LastModified}, nil
}

// PresignGet returns a URL that lets anyone GET key for ttl, straight from
// the store (with Range), without credentials.
func (s *Store) PresignGet(ctx context.Context, key string, ttl time.Duration) (*url.URL, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, err
	}
	u, err := s.client.PresignedGetObject(ctx, s.bucket, obj, ttl, url.Values{})
	if err != nil {
		return nil, fmt.Errorf("presign %s: %w", key, err)
	}
	return u, nil
}

// Stat implements server.BlobStore.
func (s *Store) Stat(ctx context.Context, key string) (server.BlobInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return server.BlobInfo{}, err
	}
	st, err := s.client.StatObject(ctx, s.bucket, obj, minio.StatObjectOptions{})
	if err != nil {
		return server.BlobInfo{}, mapErr(key, err)
	}
	return server.BlobInfo{Size: st.Size, ModTime: st.LastModified}, nil
}

// Delete implements server.BlobStore.
func (s *Store) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, obj, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(mapErr(key, err), server.ErrBlobNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Ping implements server.BlobStore.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.client.BucketExists(ctx, s.bucket); err != nil {
		return fmt.Errorf("s3 bucket %s: %w", s.bucket, err)
	}
	return nil
}

// mapErr turns S3's "not there" answers into ErrBlobNotFound. Some
// S3-compatible stores answer 403 instead of 404 for a missing key when
// listing is not allowed; TUF clients need a real 404, so 403 maps too.
func mapErr(key string, err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey", resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusForbidden && resp.Code == "AccessDenied":
		return fmt.Errorf("%s: %w", key, server.ErrBlobNotFound)
	}
	return fmt.Errorf("%s: %w", key, err)
}
