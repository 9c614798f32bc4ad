package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/internal/meta"
	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/softwarerecord"
)

// TestSoftwareRecord: one vehicle's record lists a USB install, an
// over-the-air install (auto-assign), a rolled-back job and a campaign
// install, each with its ECU, from and to version and sha256, how it
// arrived, its job or campaign and outcome, in JSON and CSV; the signed
// export verifies offline with the server's published key and fails
// once one byte changes.
func TestSoftwareRecord(t *testing.T) {
	w := newWorld(t)
	w.signerInit()
	w.add(findSample(t, huHW, "1.1.0"))
	w.add(findSample(t, dcmHW, "1.1.0"))
	w.publish()
	v := w.vehicle(1)
	dealer := w.account("dealer", "dealer-1")

	// 1. USB: both ECUs to 1.1.0 offline; reported at the next check-in.
	code, bundle := w.download(t, v.vin, dealer, "?valid_days=2")
	if code != 200 {
		t.Fatalf("bundle: %d", code)
	}
	file := filepath.Join(w.dir, "bundle.tar")
	os.WriteFile(file, bundle, 0o600)
	if r := agent(t, "install-usb", "--state", v.dir, file); r.code != 0 {
		t.Fatalf("install-usb: %s", r)
	}
	// 2. Over the air: DCM 2.0.0, auto-assigned.
	w.add(findSample(t, dcmHW, "2.0.0"))
	w.publish()
	update(t, v.dir, 0)
	// 3. A DCM image that fails its boot check (rolled back), and the head
	// unit's 2.0.0 through a campaign.
	for _, s := range loadSamples(t) {
		if !s.Bootable && s.ECU == "dcm" {
			w.add(s)
		}
	}
	w.add(findSample(t, huHW, "2.0.0"))
	w.publish()
	campaign := w.startCampaign(t, map[string]any{"ecu": "head-unit", "version": "2.0.0"})
	deadline := time.Now().Add(30 * time.Second)
	for versions(t, v)["head-unit"] != "2.0.0" {
		if time.Now().After(deadline) {
			t.Fatalf("the campaign did not reach the vehicle: %+v", w.campaign(t, campaign))
		}
		agent(t, "update", "--state", v.dir)
		time.Sleep(200 * time.Millisecond)
	}

	var doc softwarerecord.Document
	if code := w.api("GET", "/api/v1/vehicles/"+v.vin+"/software-record", dealer, nil, &doc); code != 200 {
		t.Fatalf("software record: %d", code)
	}
	hash := func(version, hw string) string {
		b, err := os.ReadFile(filepath.Join(samplesDir(), findSample(t, hw, version).File))
		if err != nil {
			t.Fatal(err)
		}
		return sha256hex(b)
	}
	find := func(via, serial, to, outcome string) server.SoftwareRecord {
		t.Helper()
		for _, r := range doc.Entries {
			if r.Via == via && r.ECUSerial == serial && r.ToVersion == to && r.Outcome == outcome {
				return r
			}
		}
		t.Fatalf("no %s %s entry for %s to %s in %+v", via, outcome, serial, to, doc.Entries)
		return server.SoftwareRecord{}
	}
	usb := find("usb", "DCM000001", "1.1.0", "installed")
	if usb.FromVersion != "1.0.0" || usb.FromSHA256 != hash("1.0.0", dcmHW) || usb.ToSHA256 != hash("1.1.0", dcmHW) || usb.ECUType != "dcm" {
		t.Errorf("USB entry: %+v", usb)
	}
	find("usb", "HU000001", "1.1.0", "installed")
	ota := find("auto-assign", "DCM000001", "2.0.0", "installed")
	if ota.FromVersion != "1.1.0" || ota.ToSHA256 != hash("2.0.0", dcmHW) || ota.JobID == "" {
		t.Errorf("OTA entry: %+v", ota)
	}
	back := find("auto-assign", "DCM000001", "2.1.0", "rolled_back")
	if back.JobID == "" || back.FromVersion != "2.0.0" {
		t.Errorf("rolled-back entry: %+v", back)
	}
	camp := find("campaign", "HU000001", "2.0.0", "installed")
	if camp.CampaignID != campaign || camp.JobID == "" || camp.FromVersion != "1.1.0" || camp.ToSHA256 != hash("2.0.0", huHW) {
		t.Errorf("campaign entry: %+v", camp)
	}

	// CSV: a header and one row per entry.
	req, _ := http.NewRequest("GET", w.url+"/api/v1/vehicles/"+v.vin+"/software-record?format=csv", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(resp.Body).ReadAll()
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("CSV: %v %s", err, resp.Header.Get("Content-Type"))
	}
	if len(rows) != len(doc.Entries)+1 || strings.Join(rows[0], ",") != strings.Join(softwarerecord.CSVHeader, ",") {
		t.Fatalf("CSV has %d rows for %d entries; header %v", len(rows), len(doc.Entries), rows[0])
	}
	if !strings.Contains(csvText(rows), ",usb,") || !strings.Contains(csvText(rows), ",rolled_back,") || !strings.Contains(csvText(rows), campaign) {
		t.Errorf("CSV lacks entries:\n%s", csvText(rows))
	}

	// Signed: verifies offline with the published key; one byte changed does not.
	req, _ = http.NewRequest("GET", w.url+"/api/v1/vehicles/"+v.vin+"/software-record?format=signed", nil)
	req.Header.Set("Authorization", "Bearer "+dealer)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	signed, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pub := publishedRecordKey(t, w)
	got, n, err := softwarerecord.Verify(bytes.NewReader(signed), pub, v.vin, nil)
	if err != nil || got.VIN != v.vin || n != int64(len(doc.Entries)) {
		t.Fatalf("signed export: %v (%d entries, want %d)", err, n, len(doc.Entries))
	}
	if _, _, err := softwarerecord.Verify(bytes.NewReader(signed), pub, "JTMBFREV9N0000009", nil); err == nil {
		t.Fatal("a signed export verifies as another VIN's record")
	}
	i := bytes.Index(signed, []byte(`"toVersion":"`)) + len(`"toVersion":"`)
	tampered := append([]byte(nil), signed...)
	tampered[i] ^= 0x01
	if _, _, err := softwarerecord.Verify(bytes.NewReader(tampered), pub, v.vin, nil); err == nil {
		t.Fatal("a signed export with one byte changed still verifies")
	}
	// The command line checks it too: exit 0, and 3 for the altered one.
	recFile, badFile := filepath.Join(t.TempDir(), "record.jsonl"), filepath.Join(t.TempDir(), "bad.jsonl")
	os.WriteFile(recFile, signed, 0o600)
	os.WriteFile(badFile, tampered, 0o600)
	if r := serverCmd(t, "record", "verify", "--vin", v.vin, "--data", w.data, recFile); r.code != 0 || !strings.Contains(r.stdout, "software record of "+v.vin) {
		t.Errorf("record verify: %s", r)
	}
	if r := serverCmd(t, "record", "verify", "--vin", v.vin, "--data", w.data, badFile); r.code != 3 {
		t.Errorf("record verify of an altered record: %s", r)
	}

	// Owners see only their own vehicles' records.
	other := w.account("owner", "stranger")
	if code := w.api("GET", "/api/v1/vehicles/"+v.vin+"/software-record", other, nil, nil); code != 403 && code != 404 {
		t.Errorf("a stranger reading the record: %d", code)
	}
}

func csvText(rows [][]string) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(r, ",") + "\n")
	}
	return b.String()
}

// publishedRecordKey is the key a third party has: the image timestamp
// key from the server's online-keys.json.
func publishedRecordKey(t *testing.T, w *world) ed25519.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.data, "online-keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ok meta.OnlineKeys
	if err := json.Unmarshal(b, &ok); err != nil {
		t.Fatal(err)
	}
	pk, err := ok.Image.Timestamp.ToPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pk.(ed25519.PublicKey)
}
