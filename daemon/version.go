package daemon

import (
	"runtime/debug"
	"strings"
)

// Version is dyad's version. The Makefile and deploy/release/release.sh set
// it from `git describe --tags --always --dirty` with
// -ldflags "-X github.com/dyad-tunnel/dyad/daemon.Version=v1.2.3"; a plain
// `go build` in a git checkout falls back to the commit Go stamped in the
// build information (vcsVersion), and anything else says "dev".
var Version = "dev"

func init() {
	if Version == "dev" {
		if v := vcsVersion(); v != "" {
			Version = v
		}
	}
}

// vcsVersion is the version a build without -X carries: the module version
// of `go install …@v1.2.3`, else the first 12 hex digits of the commit Go
// stamped (-buildvcs), with "-dirty" for uncommitted changes; "" when the
// build has neither.
func vcsVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	return vcsVersionOf(bi)
}

// vcsVersionOf is vcsVersion for the build information bi (tested by
// TestVCSVersion).
func vcsVersionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" && !strings.HasPrefix(v, "v0.0.0-") {
		return v
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return ""
	}
	rev = rev[:min(12, len(rev))]
	if dirty {
		rev += "-dirty"
	}
	return "dev-" + rev
}

// buildCommit is the commit Go stamped in the build, or "".
func buildCommit() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}
