package testsupport

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// PGPair is a private PostgreSQL primary and a streaming-replication
// standby on loopback ports of their own, made with the installed
// PostgreSQL's initdb, pg_basebackup and pg_ctl. Commits wait for the
// standby (synchronous_commit on, synchronous_standby_names '*'), so a
// write a client saw acknowledged survives the primary's loss. The
// machine's own PostgreSQL is never touched.
type PGPair struct {
	t                      testing.TB
	bin, dir               string
	Primary, Standby       string // data directories
	PrimaryPort, StandbyPt int
	cred                   *syscall.Credential
}

// PGBin is the newest installed PostgreSQL's bin directory.
func PGBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, pg_ctl): install the postgresql package")
}

// StartPGPair starts the pair for t and stops both when t ends. It fails
// t when the binaries are missing and ROADSIGN_REQUIRE_POSTGRES=1, and
// skips it otherwise.
func StartPGPair(t testing.TB) *PGPair {
	t.Helper()
	bin, err := PGBin()
	if err != nil {
		if os.Getenv("ROADSIGN_REQUIRE_POSTGRES") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	// initdb refuses to run as root: then the servers run as postgres,
	// in a directory that user can reach.
	dir, err := os.MkdirTemp("", "roadsign-pgpair-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &PGPair{t: t, bin: bin, dir: dir, Primary: filepath.Join(dir, "primary"), Standby: filepath.Join(dir, "standby")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	p.PrimaryPort, p.StandbyPt = freePort(t), freePort(t)
	p.run("initdb", "-D", p.Primary, "-U", "postgres", "--auth=trust", "--no-sync")
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
wal_level = replica
max_wal_senders = 5
hot_standby = on
synchronous_standby_names = '*'
synchronous_commit = on
max_connections = 200
`, p.PrimaryPort, dir)
	p.appendConf(p.Primary, "postgresql.conf", conf)
	p.start(p.Primary)
	p.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(p.PrimaryPort), "-U", "postgres", "-D", p.Standby, "-R", "-X", "stream", "--no-sync")
	// Promoted, the standby has no standby of its own to wait for: it
	// commits alone until an operator attaches a new one (docs/operations.md).
	p.appendConf(p.Standby, "postgresql.auto.conf", fmt.Sprintf("port = %d\nsynchronous_standby_names = ''\n", p.StandbyPt))
	p.start(p.Standby)
	t.Cleanup(func() {
		for _, d := range []string{p.Primary, p.Standby} {
			if _, err := os.Stat(filepath.Join(d, "postmaster.pid")); err == nil {
				p.cmd("pg_ctl", "-D", d, "-m", "immediate", "stop").Run()
			}
		}
	})
	return p
}

// URL is the multi-host connection string servers use: whichever of the
// two accepts writes (target_session_attrs=read-write).
func (p *PGPair) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		p.PrimaryPort, p.StandbyPt)
}

// KillPrimary SIGKILLs the primary's postmaster and every backend of it
// at once, as the loss of its machine would.
func (p *PGPair) KillPrimary() {
	p.t.Helper()
	raw, err := os.ReadFile(filepath.Join(p.Primary, "postmaster.pid"))
	if err != nil {
		p.t.Fatalf("primary's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
	if err != nil {
		p.t.Fatalf("primary's pid file: %v", err)
	}
	pids := []int{pid}
	if out, err := exec.Command("pgrep", "-P", strconv.Itoa(pid)).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	for _, k := range pids {
		syscall.Kill(k, syscall.SIGKILL)
	}
	os.Remove(filepath.Join(p.Primary, "postmaster.pid"))
}

// Promote makes the standby the primary and waits until it accepts
// writes.
func (p *PGPair) Promote() {
	p.t.Helper()
	p.run("pg_ctl", "-D", p.Standby, "-w", "-t", "30", "promote")
}

func (p *PGPair) start(data string) {
	p.t.Helper()
	p.run("pg_ctl", "-D", data, "-l", filepath.Join(p.dir, filepath.Base(data)+".log"), "-w", "-t", "60", "start")
}

func (p *PGPair) appendConf(data, name, text string) {
	p.t.Helper()
	f, err := os.OpenFile(filepath.Join(data, name), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(text)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		p.t.Fatalf("configure %s: %v", data, err)
	}
}

func (p *PGPair) cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.Dir = p.dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

func (p *PGPair) run(name string, args ...string) {
	p.t.Helper()
	var out bytes.Buffer
	cmd := p.cmd(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		logs, _ := filepath.Glob(filepath.Join(p.dir, "*.log"))
		var tail string
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			tail += fmt.Sprintf("\n%s:\n%s", l, b)
		}
		p.t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), tail)
	}
}

// FreeAddr is a loopback address (127.0.0.1:PORT) nobody listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// freePort is the port of FreeAddr.
func freePort(t testing.TB) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(FreeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}
