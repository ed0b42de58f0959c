package daemon

import (
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// newLogger makes the operational log on out. log.format json or console
// says which; empty means console when out is a terminal (a person
// watching) and JSON otherwise (a file, journald, a container runtime).
// Colour codes are written only to a terminal, never into a file
// (TestLogFormat). Durations are seconds, with the unit in the field name
// (drain_s, retry_in_s).
func newLogger(cfg *Config, out io.Writer) zerolog.Logger {
	tty := isTerminal(out)
	format := cfg.File.Log.Format
	if format == "" {
		format = "json"
		if tty {
			format = "console"
		}
	}
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339, NoColor: !tty}
	}
	return zerolog.New(out).Level(cfg.LogLevel).With().Timestamp().Str("site", cfg.Site).Logger()
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
