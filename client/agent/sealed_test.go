package agent_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/roadsign/roadsign/client"
	"github.com/roadsign/roadsign/client/fault"
	"github.com/roadsign/roadsign/internal/sealed"
	"github.com/roadsign/roadsign/internal/testsupport"
)

// TestEncryptedImage: an image the director sends sealed installs once
// every chunk authenticated, its plaintext verified as any image; a file
// key wrapped for another unit's key, a flipped bit, and a download cut
// short are refused with nothing installed, and a dropped download
// resumes on a chunk boundary.
func TestEncryptedImage(t *testing.T) {
	assign := testsupport.Assign{Path: "dcm-2.0.bin", ECUs: map[string]string{"DCM1": "DCM-A"}}
	ownKey := func(t *testing.T, c *car) []byte {
		k, err := c.v.EncryptionKey("DCM1")
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey().Bytes()
	}
	t.Run("installs", func(t *testing.T) {
		c := newCar(t)
		c.u.Seal("dcm-2.0.bin", map[string][]byte{"DCM1": ownKey(t, c)})
		c.u.Direct("", assign)
		c.u.Publish()
		c.a.Faults = fault.Set{NetworkDropPct: 50}
		if _, err := c.a.Update(context.Background()); !errors.Is(err, client.ErrUnreachable) {
			t.Fatalf("a dropped download: %v, want unreachable", err)
		}
		c.a.Faults = fault.Set{}
		if _, err := c.a.Update(context.Background()); err != nil || c.running(t)["DCM1"] != "2.0.0" {
			t.Fatalf("resumed: %v, runs %v", err, c.running(t))
		}
	})
	t.Run("wrapped for another unit", func(t *testing.T) {
		c := newCar(t)
		other, _ := ecdh.X25519().GenerateKey(rand.Reader)
		c.u.Seal("dcm-2.0.bin", map[string][]byte{"DCM1": other.PublicKey().Bytes()})
		c.u.Direct("", assign)
		c.u.Publish()
		_, err := c.a.Update(context.Background())
		if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "does not open") || c.running(t)["DCM1"] != "1.0.0" {
			t.Fatalf("update: %v, runs %v", err, c.running(t))
		}
	})
	for name, damage := range map[string]func(c *car, file string){
		"a flipped bit": func(c *car, file string) { c.u.DamageSealed(file, sealed.HeaderSize+1024+sealed.Overhead+7) },
		"cut short":     func(c *car, file string) { c.a.Faults = fault.Set{TruncateDownload: true} },
	} {
		t.Run(name, func(t *testing.T) {
			c := newCar(t)
			file := c.u.Seal("dcm-2.0.bin", map[string][]byte{"DCM1": ownKey(t, c)})
			damage(c, file)
			c.u.Direct("", assign)
			c.u.Publish()
			_, err := c.a.Update(context.Background())
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "does not authenticate") || c.running(t)["DCM1"] != "1.0.0" {
				t.Fatalf("update: %v, runs %v", err, c.running(t))
			}
		})
	}
}
