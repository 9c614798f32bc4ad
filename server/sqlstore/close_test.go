package sqlstore_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/sqlite"
)

// TestCloseLeavesNothingRunning: a transaction's first use of a query
// has it prepared off its path, by a goroutine; Close waits for those,
// so none opens a connection after the store is closed (one did, and
// re-created the database file in a folder being removed).
func TestCloseLeavesNothingRunning(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	v := server.Vehicle{VIN: "1RSCLOSE000000001", Model: "M", Year: 2026, Region: "EU", PublicKey: []byte{1},
		CreatedAt: time.Now(), ECUs: []server.ECU{{Serial: "HU1", Type: "head-unit", HardwareID: "HU-A"}}}
	if err := st.CreateVehicle(ctx, v); err != nil { // transactions: warms statements
		t.Fatal(err)
	}
	if err := st.ReportECUs(ctx, v.VIN, v.ECUs, server.Health{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "sqlstore.(*Store).cached") {
		t.Fatalf("a statement warmer still runs after Close:\n%s", stacks)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil { // twice is harmless
		t.Logf("second Close: %v", err)
	}
}
