// Package envflag lets every command-line flag also be set by an
// environment variable ROADSIGN_<FLAG> (--data ↔ ROADSIGN_DATA), with the
// command line taking precedence.
package envflag

import (
	"flag"
	"fmt"
	"strings"
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
