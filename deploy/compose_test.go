package deploy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/daemon/state"
)

// compose is the part of a Compose file these tests read (short syntax for
// volumes, networks and ports, as compose/compose.yaml writes them).
type compose struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]any            `yaml:"networks"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Command     []string                     `yaml:"command"`
	User        string                       `yaml:"user"`
	Environment map[string]string            `yaml:"environment"`
	Volumes     []string                     `yaml:"volumes"`
	Networks    []string                     `yaml:"networks"`
	NetworkMode string                       `yaml:"network_mode"`
	Ports       []string                     `yaml:"ports"`
	ReadOnly    bool                         `yaml:"read_only"`
	DependsOn   map[string]map[string]string `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// mount is one short-syntax volume: a bind mount when Source is a path.
type mount struct{ Source, Target string }

func (s composeService) mounts() []mount {
	var ms []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		ms = append(ms, mount{parts[0], parts[1]})
	}
	return ms
}

func (m mount) bind() bool {
	return strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/")
}

// volumeAt returns the named volume s mounts at target, or "".
func (s composeService) volumeAt(target string) string {
	for _, m := range s.mounts() {
		if m.Target == target && !m.bind() {
			return m.Source
		}
	}
	return ""
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

// TestComposeFiles checks compose/compose.yaml against the files beside it:
// every bind mount, build context and Dockerfile exists, every named volume
// and network is declared, every pulled image is pinned to a version, the
// sites run read-only, start with no peer pinned (init only installs their
// templates) and share their configuration and state volumes with the
// one-shot steps at the paths their dyad.yaml names, and pair waits for both
// to be healthy and runs as the daemons' user (the control socket admits no
// other). The collector's configuration is validated by a real collector
// when one is built (make collector sets DYAD_OTELCOL).
func TestComposeFiles(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"init", "pair", "site-a", "site-b", "api", "otel-collector"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("service %s missing", name)
		}
	}
	for name, s := range c.Services {
		if s.Build != nil {
			ctx := filepath.Join("compose", s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, "go.mod")); err != nil {
				t.Errorf("%s: build context %s is not the module root: %v", name, s.Build.Context, err)
			}
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		} else if tag := s.Image[strings.LastIndex(s.Image, ":")+1:]; !strings.Contains(s.Image, ":") || tag == "latest" {
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}
		for _, m := range s.mounts() {
			if m.bind() {
				if _, err := os.Stat(filepath.Join("compose", m.Source)); err != nil {
					t.Errorf("%s: bind mount %s: %v", name, m.Source, err)
				}
			} else if _, ok := c.Volumes[m.Source]; !ok {
				t.Errorf("%s: volume %s is not declared", name, m.Source)
			}
		}
		for _, n := range s.Networks {
			if _, ok := c.Networks[n]; !ok {
				t.Errorf("%s: network %s is not declared", name, n)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s: depends on unknown service %s", name, dep)
			}
		}
	}
	initStep, pair := c.Services["init"], c.Services["pair"]
	for _, site := range []string{"site-a", "site-b"} {
		s := c.Services[site]
		if !s.ReadOnly {
			t.Errorf("%s: read_only is not set", site)
		}
		// dyad.yaml's relative identity path and the journal need these
		// mounts; init must write into the same volume, and pair read it
		// where its SITE_?_CONFIG says.
		v := s.volumeAt("/etc/dyad")
		if v == "" || initStep.volumeAt("/sites/"+site) != v {
			t.Errorf("%s: /etc/dyad is volume %q, but init writes /sites/%s to %q", site, v, site, initStep.volumeAt("/sites/"+site))
		}
		env := "SITE_" + strings.ToUpper(site[len(site)-1:]) + "_CONFIG"
		if cfg := pair.Environment[env]; cfg != "/sites/"+site+"/dyad.yaml" || pair.volumeAt("/sites/"+site) != v {
			t.Errorf("%s: pair reads %s=%q from volume %q, not /sites/%s/dyad.yaml from %q", site, env, cfg, pair.volumeAt("/sites/"+site), site, v)
		}
		if s.volumeAt("/var/lib/dyad") == "" {
			t.Errorf("%s: no volume for the journal at /var/lib/dyad", site)
		}
		if s.DependsOn["init"]["condition"] != "service_completed_successfully" {
			t.Errorf("%s: does not wait for init to finish", site)
		}
		if pair.DependsOn[site]["condition"] != "service_healthy" {
			t.Errorf("pair: does not wait for %s to be healthy", site)
		}
		if s.Healthcheck == nil || !slices.Contains(s.Healthcheck.Test, "status") || !slices.Contains(s.Healthcheck.Test, "/etc/dyad/dyad.yaml") {
			t.Errorf("%s: no healthcheck asking the daemon's control socket (dyad status)", site)
		}

		// The template pins no peer: pair.sh enrols it into state_dir,
		// which is a volume the site, init (to create it owned by the
		// daemons' user) and pair mount at the same path.
		f := loadTemplate(t, site)
		if len(f.Peers) != 0 || len(f.Forwards) != 0 {
			t.Errorf("%s.yaml pins %d peers and %d forwards: the sites pair with dyad invite/join", site, len(f.Peers), len(f.Forwards))
		}
		for _, svc := range f.Services {
			if len(svc.Allow) != 0 {
				t.Errorf("%s.yaml: service %s allows %v before any pairing", site, svc.Name, svc.Allow)
			}
		}
		if !filepath.IsAbs(f.StateDir) {
			t.Errorf("%s.yaml: state_dir %q is not an absolute path", site, f.StateDir)
		} else if sv := s.volumeAt(f.StateDir); sv == "" || sv == v || pair.volumeAt(f.StateDir) != sv || initStep.volumeAt(f.StateDir) != sv {
			t.Errorf("%s: state_dir %s is volume %q in the site, %q in pair, %q in init (want one writable volume, not /etc/dyad's)",
				site, f.StateDir, sv, pair.volumeAt(f.StateDir), initStep.volumeAt(f.StateDir))
		}
	}
	// The control socket is 0600 and checks the caller's uid: pair must run
	// as the user of the sites' image.
	if want := dockerfileUser(t); pair.User != want {
		t.Errorf("pair: user %q, but the daemons run as %q (their control sockets admit only that uid)", pair.User, want)
	}
	if bin := os.Getenv("DYAD_OTELCOL"); bin != "" {
		out, err := exec.Command(bin, "validate", "--config", "compose/otel-collector.yaml").CombinedOutput()
		if err != nil {
			t.Errorf("collector rejects compose/otel-collector.yaml: %v\n%s", err, out)
		}
	} else {
		t.Log("DYAD_OTELCOL not set (make collector): compose/otel-collector.yaml not validated")
	}
}

// loadTemplate decodes compose/SITE.yaml, the site's dyad.yaml as init.sh
// installs it.
func loadTemplate(t *testing.T, site string) daemon.File {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("compose", site+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f daemon.File
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s.yaml: %v", site, err)
	}
	return f
}

// dockerfileUser is the USER of the dyad image (the last stage of
// container/Dockerfile).
func dockerfileUser(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	user := ""
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "USER "); ok {
			user = strings.TrimSpace(rest)
		}
	}
	if user == "" {
		t.Fatal("container/Dockerfile sets no USER")
	}
	return user
}

// TestComposeSitesEndToEnd proves the Compose demo's flow works without
// Docker: it runs compose/init.sh on this host with the real dyad (twice: the
// second run must keep the keys), `dyad check`s each installed dyad.yaml as
// the containers would read it (no peer pinned), runs both sites as
// processes on loopback, then compose/pair.sh against them with pair's
// environment from compose.yaml: dyad invite on site-b, dyad join on
// site-a, equal verification phrases printed, each peer enrolled in the
// other's state directory, neither dyad.yaml changed; an invitation left
// pending by an interrupted run is cancelled first, and a second pair.sh
// leaves the pairing as it is.
// Every compose address is replaced by a loopback one after checking that
// it names the right compose service on a network both ends share; the api
// container becomes an HTTP server here and the collector an OTLP/gRPC
// receiver. A request goes through the forward site-a enrolled to the API,
// and both sites' audit events (the enrolment and the tunnel) must reach
// the receiver.
func TestComposeSitesEndToEnd(t *testing.T) {
	c := loadCompose(t)
	tmp := t.TempDir()
	bin, err := daemontest.Build("..", tmp)
	if err != nil {
		t.Fatal(err)
	}
	templates, err := filepath.Abs("compose")
	if err != nil {
		t.Fatal(err)
	}
	sites := filepath.Join(tmp, "sites")
	initSites := func() {
		t.Helper()
		cmd := exec.Command("sh", filepath.Join(templates, "init.sh"))
		cmd.Env = append(os.Environ(), "DYAD="+bin, "TEMPLATES="+templates, "SITES="+sites)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("init.sh: %v\n%s", err, out)
		}
	}
	initSites()
	keyA, _ := os.ReadFile(filepath.Join(sites, "site-a", "keys", "identity.key"))
	initSites()
	if again, _ := os.ReadFile(filepath.Join(sites, "site-a", "keys", "identity.key")); string(again) != string(keyA) {
		t.Fatal("init.sh replaced site-a's identity on its second run")
	}

	files := map[string]daemon.File{}
	for _, site := range []string{"site-a", "site-b"} {
		path := filepath.Join(sites, site, "dyad.yaml")
		if out, err := exec.Command(bin, "check", "--config", path).CombinedOutput(); err != nil {
			t.Fatalf("dyad check %s: %v\n%s", site, err, out)
		}
		cfg, err := daemon.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.File.Peers) != 0 || len(cfg.File.Forwards) != 0 {
			t.Fatalf("%s: dyad.yaml pins %d peers, %d forwards before pair.sh ran", site, len(cfg.File.Peers), len(cfg.File.Forwards))
		}
		files[site] = cfg.File
	}

	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "payments api: %s %s\n", r.Method, r.URL.Path)
	}))
	defer api.Close()
	otlp := audittest.StartGRPC(t)

	// Loopback addresses for what the containers listen on.
	listen := map[string]string{} // "site-b:7443" (service:container port) → loopback
	free := func(udp bool) string {
		t.Helper()
		a, err := daemontest.FreeTCP()
		if udp {
			a, err = daemontest.FreeUDP()
		}
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	local := func(site, addr string, udp bool) string {
		t.Helper()
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "0.0.0.0" {
			t.Fatalf("%s: %q: containers listen on 0.0.0.0:port", site, addr)
		}
		a := free(udp)
		listen[site+":"+port] = a
		return a
	}
	// The api and the collector listen where their own configuration says.
	if cmd := c.Services["api"].Command; len(cmd) == 2 && cmd[0] == "--port" {
		listen["api:"+cmd[1]] = api.Listener.Addr().String()
	} else {
		t.Fatalf("api: command %q does not set --port", cmd)
	}
	listen["otel-collector:"+collectorGRPCPort(t)] = strings.TrimPrefix(otlp.Endpoint(), "http://")
	// reach rewrites an address a site dials, after checking that it names
	// a compose service on a network the site shares with it.
	reach := func(site, addr string) string {
		t.Helper()
		host, _, _ := net.SplitHostPort(addr)
		target, ok := c.Services[host]
		if !ok {
			t.Fatalf("%s dials %s: no compose service %q", site, addr, host)
		}
		if !slices.ContainsFunc(c.Services[site].Networks, func(n string) bool { return slices.Contains(target.Networks, n) }) {
			t.Fatalf("%s dials %s, but they share no network", site, addr)
		}
		a, ok := listen[addr]
		if !ok {
			t.Fatalf("%s dials %s: nothing listens there", site, addr)
		}
		return a
	}

	running := map[string]*daemontest.Site{}
	for _, site := range []string{"site-b", "site-a"} {
		f := files[site]
		f.Listen = local(site, f.Listen, true)
		f.Admin = local(site, f.Admin, false)
		for i := range f.Services {
			f.Services[i].Upstream = reach(site, f.Services[i].Upstream)
		}
		if f.Audit.OTLP == nil || f.Audit.OTLP.Protocol != "grpc" {
			t.Fatalf("%s: audit.otlp is not gRPC", site)
		}
		f.Audit.OTLP.Endpoint = "http://" + reach(site, strings.TrimPrefix(f.Audit.OTLP.Endpoint, "http://"))
		if !strings.HasPrefix(f.Audit.Journal.Dir, "/var/lib/dyad/") {
			t.Fatalf("%s: journal %s is not on the /var/lib/dyad volume", site, f.Audit.Journal.Dir)
		}
		f.Audit.Journal.Dir = "audit"
		if c.Services[site].volumeAt(f.StateDir) == "" {
			t.Fatalf("%s: state_dir %s is not a volume of the site (/etc/dyad is read-only)", site, f.StateDir)
		}
		f.StateDir = "state"
		s := &daemontest.Site{Name: site, Dir: filepath.Join(sites, site), Bin: bin, Config: f}
		if err := s.StartReady(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := s.Stop(10 * time.Second); err != nil {
				t.Errorf("%s: %v\n%s", site, err, s.Logs())
			}
		}()
		running[site] = s
	}

	// pair.sh with pair's environment, its addresses made loopback ones:
	// site-a dials the endpoint site-b's invitation names, and carries
	// the forward port compose publishes.
	env := c.Services["pair"].Environment
	forwardPort := env["SITE_A_FORWARD"][strings.LastIndex(env["SITE_A_FORWARD"], ":")+1:]
	if !slices.ContainsFunc(c.Services["site-a"].Ports, func(p string) bool { return strings.Contains(p, ":"+forwardPort+":"+forwardPort+"/") }) {
		t.Errorf("site-a: forward port %s (pair's SITE_A_FORWARD) is not published", forwardPort)
	}
	forward := local("site-a", env["SITE_A_FORWARD"], false)
	runPair := func() (string, error) {
		cmd := exec.Command("sh", filepath.Join(templates, "pair.sh"))
		cmd.Env = append(os.Environ(), "DYAD="+bin, "SERVICE="+env["SERVICE"], "WAIT=20",
			"SITE_A_CONFIG="+running["site-a"].ConfigPath(), "SITE_B_CONFIG="+running["site-b"].ConfigPath(),
			"SITE_B_ENDPOINT="+reach("site-a", env["SITE_B_ENDPOINT"]), "SITE_A_FORWARD="+forward)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	pair := func() string {
		t.Helper()
		out, err := runPair()
		if err != nil {
			t.Fatalf("pair.sh: %v\n%s\nsite-a:\n%s\nsite-b:\n%s", err, out, running["site-a"].Logs(), running["site-b"].Logs())
		}
		return out
	}
	enrolled := func(site string) []state.Peer {
		t.Helper()
		st, err := state.Load(filepath.Join(sites, site, "state"))
		if err != nil {
			t.Fatal(err)
		}
		return st.Peers
	}
	// An earlier run stopped after its invitation: pair.sh cancels it
	// rather than fail until it expires.
	if out, err := exec.Command(bin, "invite", "--config", running["site-b"].ConfigPath(), "--peer", "site-a", "--service", env["SERVICE"]).CombinedOutput(); err != nil {
		t.Fatalf("stale invitation: %v\n%s", err, out)
	}
	out := pair()
	if !strings.Contains(out, "Cancelled 1 pending invitation") {
		t.Errorf("pair.sh did not cancel the stale invitation:\n%s", out)
	}
	if !strings.Contains(out, "the phrases match") || strings.Contains(out, "dyad2:") {
		t.Fatalf("pair.sh printed no matching phrases (or a key):\n%s", out)
	}
	peersFile := func(site string) []byte {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(sites, site, "state", state.PeersFile))
		if err != nil {
			t.Fatalf("%s: %v", site, err)
		}
		return data
	}
	checkEnrolled := func() string {
		t.Helper()
		pa, pb := enrolled("site-a"), enrolled("site-b")
		if len(pa) != 1 || pa[0].Name != "site-b" || pa[0].Role != "join" ||
			!slices.Equal(pa[0].Forwards, []state.Forward{{Listen: forward, Service: env["SERVICE"]}}) {
			t.Fatalf("site-a's state after pair.sh: %+v", pa)
		}
		if len(pb) != 1 || pb[0].Name != "site-a" || pb[0].Role != "invite" || !slices.Equal(pb[0].Services, []string{env["SERVICE"]}) {
			t.Fatalf("site-b's state after pair.sh: %+v", pb)
		}
		return pb[0].Phrase
	}
	phrase := checkEnrolled()
	// Both phrases printed, each the one site-b's daemon enrolled site-a
	// with (what its operator reads from dyad.peer.enrolled).
	for _, label := range []string{"site-a's verification phrase (dyad join):", "site-b's verification phrase (dyad invite --wait):"} {
		i := strings.Index(out, label)
		if i < 0 {
			t.Fatalf("pair.sh printed no %q:\n%s", label, out)
		}
		line, _, _ := strings.Cut(out[i+len(label):], "\n")
		if got := strings.TrimSpace(line); got == "" || got != phrase {
			t.Fatalf("pair.sh: %s %q, site-b enrolled site-a with %q", label, got, phrase)
		}
	}
	// Neither YAML file changed: the pairing is state.
	for _, site := range []string{"site-a", "site-b"} {
		data, err := os.ReadFile(running[site].ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		var f daemon.File
		if err := yaml.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		if len(f.Peers) != 0 || len(f.Forwards) != 0 {
			t.Errorf("%s: pair.sh wrote a peer into dyad.yaml", site)
		}
	}

	// A second run (docker compose up again) leaves the pairing alone.
	beforeA, beforeB := peersFile("site-a"), peersFile("site-b")
	if out := pair(); !strings.Contains(out, "already paired") {
		t.Fatalf("pair.sh on paired sites:\n%s", out)
	}
	if !bytes.Equal(peersFile("site-a"), beforeA) || !bytes.Equal(peersFile("site-b"), beforeB) {
		t.Fatal("pair.sh changed the enrolled peers on its second run")
	}

	// Undone at site-b only: pair.sh refuses the half pairing and names
	// the revoke that undoes the other side, changing nothing; undone at
	// both (README: pairing again), it pairs anew.
	revoke := func(site, peer string) {
		t.Helper()
		if out, err := exec.Command(bin, "revoke", "--config", running[site].ConfigPath(), peer).CombinedOutput(); err != nil {
			t.Fatalf("dyad revoke at %s: %v\n%s", site, err, out)
		}
	}
	revoke("site-b", "site-a")
	if out, err := runPair(); err == nil || !strings.Contains(out, "site-a pins site-b, but site-b does not pin site-a") || !strings.Contains(out, "dyad revoke --config") {
		t.Fatalf("pair.sh on a half pairing: %v\n%s", err, out)
	}
	if len(enrolled("site-a")) != 1 || len(enrolled("site-b")) != 0 {
		t.Fatal("pair.sh changed a half pairing")
	}
	revoke("site-a", "site-b")
	if out := pair(); !strings.Contains(out, "the phrases match") {
		t.Fatalf("pair.sh after revoking both sides:\n%s", out)
	}
	if again := checkEnrolled(); again == phrase {
		t.Fatalf("the new pairing has the old phrase %q", phrase)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; { // the tunnel comes up after join
		resp, err = client.Get("http://" + forward + "/v1/payments/42")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET through site-a's forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "payments api: GET /v1/payments/42\n" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, body)
	}
	client.CloseIdleConnections()

	// Both sites' events reach the collector: the enrolment and the tunnel
	// on each side, and the stream site-b opened to the API.
	err = otlp.WaitFor(10*time.Second, func(rs []audittest.Record) bool {
		seen := map[string]bool{}
		for _, r := range rs {
			if site := r.Resource["dyad.site"]; site != nil {
				seen[site.GetStringValue()+" "+r.Log.EventName] = true
			}
		}
		return seen["site-a "+audit.PeerEnrolled] && seen["site-b "+audit.PeerEnrolled] &&
			seen["site-a "+audit.TunnelEstablished] && seen["site-b "+audit.TunnelEstablished] && seen["site-b "+audit.StreamOpened]
	})
	if err != nil {
		t.Fatalf("OTLP: %v", err)
	}
}

// collectorGRPCPort is the OTLP/gRPC port of compose/otel-collector.yaml.
func collectorGRPCPort(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("compose/otel-collector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Receivers struct {
			OTLP struct {
				Protocols struct {
					GRPC struct {
						Endpoint string `yaml:"endpoint"`
					} `yaml:"grpc"`
				} `yaml:"protocols"`
			} `yaml:"otlp"`
		} `yaml:"receivers"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("otel-collector.yaml: %v", err)
	}
	_, port, err := net.SplitHostPort(cfg.Receivers.OTLP.Protocols.GRPC.Endpoint)
	if err != nil {
		t.Fatalf("otel-collector.yaml: receivers.otlp.protocols.grpc.endpoint: %v", err)
	}
	return port
}

// TestComposeAirGappedPairing proves compose/README.md's air-gapped path:
// the keys pinned by hand in both templates (no invite, no join), the sites
// start paired, and pair.sh finds each pinning the other and changes
// nothing (no enrolled peer in either state directory). It runs init.sh,
// both sites and pair.sh on this host, as TestComposeSitesEndToEnd does,
// without the collector.
func TestComposeAirGappedPairing(t *testing.T) {
	c := loadCompose(t)
	tmp := t.TempDir()
	bin, err := daemontest.Build("..", tmp)
	if err != nil {
		t.Fatal(err)
	}
	templates, err := filepath.Abs("compose")
	if err != nil {
		t.Fatal(err)
	}
	sites := filepath.Join(tmp, "sites")
	cmd := exec.Command("sh", filepath.Join(templates, "init.sh"))
	cmd.Env = append(os.Environ(), "DYAD="+bin, "TEMPLATES="+templates, "SITES="+sites)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init.sh: %v\n%s", err, out)
	}
	pub := func(site string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(sites, site, "keys", "identity.pub"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "payments api: %s\n", r.URL.Path)
	}))
	defer api.Close()

	env := c.Services["pair"].Environment
	free := func(get func() (string, error)) string {
		t.Helper()
		a, err := get()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	quicB, forward := free(daemontest.FreeUDP), free(daemontest.FreeTCP)
	running := map[string]*daemontest.Site{}
	for _, site := range []string{"site-b", "site-a"} {
		f := loadTemplate(t, site)
		// What the README says to add to each template.
		switch site {
		case "site-a":
			f.Listen = free(daemontest.FreeUDP)
			f.Peers = []daemon.PeerFile{{Name: "site-b", PublicKey: pub("site-b"), Endpoint: quicB}}
			f.Forwards = []daemon.ForwardConfig{{Listen: forward, Peer: "site-b", Service: env["SERVICE"]}}
		case "site-b":
			f.Listen = quicB
			f.Peers = []daemon.PeerFile{{Name: "site-a", PublicKey: pub("site-a")}}
			for i := range f.Services {
				f.Services[i].Upstream = api.Listener.Addr().String()
				f.Services[i].Allow = []string{"site-a"}
			}
		}
		f.Admin = free(daemontest.FreeTCP)
		f.Audit.OTLP = nil
		f.Audit.Journal.Dir = "audit"
		f.StateDir = "state"
		s := &daemontest.Site{Name: site, Dir: filepath.Join(sites, site), Bin: bin, Config: f}
		if err := s.StartReady(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := s.Stop(10 * time.Second); err != nil {
				t.Errorf("%s: %v\n%s", site, err, s.Logs())
			}
		}()
		running[site] = s
	}

	cmd = exec.Command("sh", filepath.Join(templates, "pair.sh"))
	cmd.Env = append(os.Environ(), "DYAD="+bin, "SERVICE="+env["SERVICE"], "WAIT=20",
		"SITE_A_CONFIG="+running["site-a"].ConfigPath(), "SITE_B_CONFIG="+running["site-b"].ConfigPath(),
		"SITE_B_ENDPOINT="+quicB, "SITE_A_FORWARD="+free(daemontest.FreeTCP))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "already paired") {
		t.Fatalf("pair.sh on sites pinned by hand: %v\n%s", err, out)
	}
	for _, site := range []string{"site-a", "site-b"} {
		st, err := state.Load(filepath.Join(sites, site, "state"))
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 0 || len(st.Invites) != 0 {
			t.Fatalf("%s: pair.sh enrolled %+v, invited %+v on sites pinned by hand", site, st.Peers, st.Invites)
		}
	}

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + forward + "/v1/payments/42")
	if err != nil {
		t.Fatalf("GET through site-a's forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK || string(body) != "payments api: /v1/payments/42\n" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, body)
	}
}
