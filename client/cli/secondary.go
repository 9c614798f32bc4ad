package cli

import (
	"context"
	"crypto/ed25519"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/roadsign/roadsign/client/agent"
	"github.com/roadsign/roadsign/client/secondary"
	"github.com/roadsign/roadsign/client/vehicle"
	"github.com/roadsign/roadsign/internal/envflag"
)

// cmdInitSecondary creates one secondary ECU's state: its slots, its
// pinned roots and its own key.
func cmdInitSecondary(args []string, env Env) error {
	fs := flag.NewFlagSet("init-secondary", flag.ContinueOnError)
	vinFlag := fs.String("vin", "", "vehicle identification number of the car the ECU is fitted in")
	ecu := fs.String("ecu", "", "the ECU as TYPE:SERIAL:HWID:FIRMWARE_FILE (the firmware boots from slot A)")
	directorRoot := fs.String("director-root", "", "director repository root to pin")
	imageRoot := fs.String("image-root", "", "image repository root to pin (full verification)")
	mode := fs.String("verification", secondary.Full, "full (both repositories) or partial (director targets only)")
	synopsis := "roadsign-agent init-secondary --state DIR --vin VIN --ecu TYPE:SERIAL:HWID:FIRMWARE_FILE --director-root FILE [--image-root FILE] --verification full|partial"
	state, _, err := parseState(fs, args, env, 0, synopsis)
	if err != nil {
		return err
	}
	if *vinFlag == "" || *ecu == "" || *directorRoot == "" {
		return envflag.Usagef("init-secondary needs --vin, --ecu and --director-root; usage: %s", synopsis)
	}
	parts := strings.SplitN(*ecu, ":", 4)
	if len(parts) != 4 {
		return envflag.Usagef("--ecu %q: want TYPE:SERIAL:HWID:FIRMWARE_FILE", *ecu)
	}
	dr, err := os.ReadFile(*directorRoot)
	if err != nil {
		return envflag.Usagef("--director-root: %v", err)
	}
	var ir []byte
	if *imageRoot != "" {
		if ir, err = os.ReadFile(*imageRoot); err != nil {
			return envflag.Usagef("--image-root: %v", err)
		}
	}
	st, err := secondary.Init(state, secondary.Config{VIN: *vinFlag, ECU: vehicle.ECUConfig{Type: parts[0], Serial: parts[1], HardwareID: parts[2]}, Verification: *mode},
		parts[3], dr, ir, env.Now)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "provisioned secondary %s %s of %s in %s (%s verification); run it with: roadsign-agent secondary --state %s --listen HOST:PORT\n",
		st.Config.ECU.Type, st.Config.ECU.Serial, st.VIN, state, st.Verification, state)
	return nil
}

// cmdSecondary runs a secondary ECU on the vehicle network until it is
// stopped.
func cmdSecondary(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("secondary", flag.ContinueOnError)
	listen := fs.String("listen", "", "HOST:PORT to serve the primary on (the in-vehicle network)")
	synopsis := "roadsign-agent secondary --state DIR --listen HOST:PORT"
	state, _, err := parseState(fs, args, env, 0, synopsis)
	if err != nil {
		return err
	}
	if *listen == "" {
		return envflag.Usagef("secondary needs --listen HOST:PORT; usage: %s", synopsis)
	}
	st, err := secondary.Open(state, env.Now)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return envflag.Usagef("--listen %s: %v", *listen, err)
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	log.Info("secondary ECU serving its primary", "ecu", st.Config.ECU.Type, "serial", st.Config.ECU.Serial, "vin", st.VIN,
		"verification", st.Verification, "listen", ln.Addr().String())
	fmt.Fprintf(env.Stdout, "secondary %s %s listening on %s\n", st.Config.ECU.Type, st.Config.ECU.Serial, ln.Addr())
	srv := &secondary.Server{State: st, Log: log}
	return srv.Serve(ctx, ln)
}

// secondaryECU asks the secondary at SERIAL=HOST:PORT who it is: it must
// be that serial, in this VIN.
func secondaryECU(spec, vinStr string) (vehicle.ECUConfig, error) {
	serial, addr, ok := strings.Cut(spec, "=")
	if !ok || serial == "" || addr == "" {
		return vehicle.ECUConfig{}, envflag.Usagef("--secondary %q: want SERIAL=HOST:PORT", spec)
	}
	h, err := agent.SecondaryHello(serial, addr)
	if err != nil {
		return vehicle.ECUConfig{}, fmt.Errorf("--secondary %s: %v; is it running (roadsign-agent secondary --listen %s)?", spec, err, addr)
	}
	switch {
	case h.Serial != serial:
		return vehicle.ECUConfig{}, envflag.Usagef("--secondary %s: the ECU at %s is %s, not %s", spec, addr, h.Serial, serial)
	case h.VIN != vinStr:
		return vehicle.ECUConfig{}, envflag.Usagef("--secondary %s: the ECU at %s is provisioned for VIN %s, not %s", spec, addr, h.VIN, vinStr)
	case len(h.PublicKey) != ed25519.PublicKeySize:
		return vehicle.ECUConfig{}, fmt.Errorf("--secondary %s: the ECU at %s has no valid key", spec, addr)
	}
	return vehicle.ECUConfig{Type: h.ECUType, Serial: h.Serial, HardwareID: h.HardwareID, Addr: addr, PublicKey: h.PublicKey}, nil
}
