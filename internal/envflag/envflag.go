// Package envflag is the command-line plumbing the three programs share:
// every flag can also be set by an environment variable ROADSIGN_<FLAG>
// (--data ↔ ROADSIGN_DATA, the command line wins), subcommand dispatch,
// and usage errors (exit code 2).
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/roadsign/roadsign/internal/buildinfo"
)

// EnvName returns the variable that sets flag name.
func EnvName(name string) string {
	return "ROADSIGN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Apply sets every flag of fs that was not given on the command line from
// its environment variable, looked up with getenv. Call after fs.Parse.
func Apply(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %v", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// Usage sets fs's usage text: a one-line synopsis, then the flags with
// their environment variables.
func Usage(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s\n\nflags (each also read from ROADSIGN_<FLAG>):\n", synopsis)
		fs.PrintDefaults()
	}
}

// UsageError marks a mistake in how a command was called (exit code 2).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return UsageError{fmt.Errorf(format, args...)}
}

// Parse parses args with fs, letting flags stand before or after the
// positional arguments, applies ROADSIGN_* variables, and checks that
// exactly positional arguments were given (-1: any number). Errors are
// UsageErrors, except flag.ErrHelp for --help.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string, positional int, synopsis string) ([]string, error) {
	Usage(fs, synopsis)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, UsageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if err := Apply(fs, getenv); err != nil {
		return nil, UsageError{err}
	}
	if positional >= 0 && len(pos) != positional {
		if len(pos) > positional {
			return nil, Usagef("unexpected argument %q; usage: %s", pos[positional], synopsis)
		}
		return nil, Usagef("missing argument; usage: %s", synopsis)
	}
	return pos, nil
}

// Dispatch runs the subcommand named by args[0], prints usage for help,
// or the build's version for --version (or "version"). An unknown or
// missing command is a UsageError.
func Dispatch(program, usage string, args []string, stdout io.Writer, commands map[string]func(args []string) error) error {
	if len(args) > 0 && IsVersion(args[0]) {
		fmt.Fprintln(stdout, buildinfo.String(program))
		return nil
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprintln(stdout, usage)
		if len(args) == 0 {
			return Usagef("missing command")
		}
		return nil
	}
	cmd, ok := commands[args[0]]
	if !ok {
		return Usagef("unknown command %q; run %s help", args[0], program)
	}
	return cmd(args[1:])
}

// IsVersion reports whether arg asks for the program's version.
func IsVersion(arg string) bool {
	return arg == "--version" || arg == "-version" || arg == "version"
}

// List is a repeatable string flag; a comma-separated value adds several
// entries (that is also how ROADSIGN_HARDWARE_ID=A,B sets more than one).
type List []string

func (s *List) String() string { return strings.Join(*s, ",") }

// Set implements flag.Value.
func (s *List) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
