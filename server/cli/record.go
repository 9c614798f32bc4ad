package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/roadsign/roadsign/internal/envflag"
	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server/repo"
	"github.com/roadsign/roadsign/server/softwarerecord"
)

// cmdRecordVerify checks a signed software record export offline: exit 0
// when it is the server's signed record of that VIN, 3 when it is not.
func cmdRecordVerify(args []string, env Env) error {
	fs := flag.NewFlagSet("roadsign-server record verify", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	vinFlag := fs.String("vin", "", "the VIN the record must be of")
	keysFile := fs.String("online-keys", "", "the server's published online-keys.json")
	data := fs.String("data", "", "or the server's data directory (its online-keys.json)")
	rest, err := envflag.Parse(fs, args, env.Getenv, 1, "roadsign-server record verify --vin VIN [--online-keys FILE | --data DIR] RECORD")
	if err != nil {
		return err
	}
	if *vinFlag == "" || (*keysFile == "") == (*data == "") {
		return envflag.Usagef("record verify needs --vin and one of --online-keys FILE or --data DIR")
	}
	if *keysFile == "" {
		*keysFile = filepath.Join(*data, repo.PublicKeysFile)
	}
	pub, err := timestampKey(*keysFile)
	if err != nil {
		return envflag.Usagef("--online-keys: %v", err)
	}
	f, err := os.Open(rest[0])
	if err != nil {
		return envflag.Usagef("%v", err)
	}
	defer f.Close()
	h, n, err := softwarerecord.Verify(f, pub, *vinFlag, nil)
	if err != nil {
		return fmt.Errorf("%w: %s is not a software record the server signed for %s: %v", errRefused, rest[0], *vinFlag, err)
	}
	fmt.Fprintf(env.Stdout, "software record of %s: %d entries, signed by key %s at %s\n", h.VIN, n, h.KeyID, h.GeneratedAt.Format(time.RFC3339))
	return nil
}

// timestampKey reads the image timestamp key from an online-keys.json.
func timestampKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ok meta.OnlineKeys
	if err := json.Unmarshal(b, &ok); err != nil || ok.Image.Timestamp == nil {
		return nil, fmt.Errorf("%s: not the server's online keys: %v", path, err)
	}
	pk, err := ok.Image.Timestamp.ToPublicKey()
	if err != nil {
		return nil, err
	}
	pub, isEd := pk.(ed25519.PublicKey)
	if !isEd {
		return nil, fmt.Errorf("%s: the timestamp key is not ed25519", path)
	}
	return pub, nil
}
