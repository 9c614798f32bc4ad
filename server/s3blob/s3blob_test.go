package s3blob_test

import (
	"context"
	"testing"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/blobtest"
	"github.com/roadsign/roadsign/server/s3blob"
	"github.com/roadsign/roadsign/server/s3blob/s3test"
)

func TestConformance(t *testing.T) {
	gw := s3test.Start(t)
	blobtest.Run(t, func(t *testing.T) server.BlobStore {
		s, err := s3blob.New(context.Background(), gw.Config())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestPrefix(t *testing.T) {
	gw := s3test.Start(t)
	c := gw.Config()
	c.Prefix = "fleet-a/"
	blobtest.Run(t, func(t *testing.T) server.BlobStore {
		s, err := s3blob.New(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		in      string
		want    s3blob.Config
		wantErr bool
	}{
		{in: "s3://fw?endpoint=127.0.0.1:9000&secure=false", want: s3blob.Config{Endpoint: "127.0.0.1:9000", Bucket: "fw"}},
		{in: "s3://fw/roadsign?endpoint=s3.example:443&region=eu-west-1", want: s3blob.Config{Endpoint: "s3.example:443", Bucket: "fw", Prefix: "roadsign/", Region: "eu-west-1", Secure: true}},
		{in: "s3://fw", wantErr: true},
		{in: "file:///x", wantErr: true},
		{in: "s3://fw?endpoint=h:1&secure=maybe", wantErr: true},
	}
	for _, tt := range tests {
		got, err := s3blob.ParseURL(tt.in, func(string) string { return "" })
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v", tt.in, err)
			continue
		}
		got.AccessKey, got.SecretKey = "", ""
		if err == nil && got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
