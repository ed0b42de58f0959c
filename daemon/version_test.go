package daemon

import (
	"runtime/debug"
	"testing"
)

// TestVCSVersion: a build without -X names itself after its module
// version (go install …@v1.2.3), else after the commit Go stamped, marked
// dirty when the tree had changes; with neither it stays "dev".
func TestVCSVersion(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, c := range []struct {
		bi   debug.BuildInfo
		want string
	}{
		{debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("413e768abcdef0123456789", "false")}, "dev-413e768abcde"},
		{debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261206-413e768abcde+dirty"}, Settings: vcs("413e768abcdef0123456789", "true")}, "dev-413e768abcde-dirty"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, ""},
	} {
		if got := vcsVersionOf(&c.bi); got != c.want {
			t.Errorf("%+v: %q, want %q", c.bi.Main, got, c.want)
		}
	}
}
