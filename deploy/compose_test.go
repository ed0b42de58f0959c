package deploy

import (
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
	Environment map[string]string            `yaml:"environment"`
	Volumes     []string                     `yaml:"volumes"`
	Networks    []string                     `yaml:"networks"`
	NetworkMode string                       `yaml:"network_mode"`
	Ports       []string                     `yaml:"ports"`
	ReadOnly    bool                         `yaml:"read_only"`
	DependsOn   map[string]map[string]string `yaml:"depends_on"`
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
// sites run read-only, and the collector's configuration is valid for a real
// collector when one is built (make collector sets DYAD_OTELCOL).
func TestComposeFiles(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"pair", "site-a", "site-b", "api", "otel-collector"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("service %s missing", name)
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
	for _, site := range []string{"site-a", "site-b"} {
		s := c.Services[site]
		if !s.ReadOnly {
			t.Errorf("%s: read_only is not set", site)
		}
		// dyad.yaml's relative identity path and the journal need exactly
		// these two mounts; pair must write into the same volume.
		if v := s.volumeAt("/etc/dyad"); v == "" || c.Services["pair"].volumeAt("/sites/"+site) != v {
			t.Errorf("%s: /etc/dyad is volume %q, but pair writes /sites/%s to %q", site, v, site, c.Services["pair"].volumeAt("/sites/"+site))
		}
		if s.volumeAt("/var/lib/dyad") == "" {
			t.Errorf("%s: no volume for the journal at /var/lib/dyad", site)
		}
		if s.DependsOn["pair"]["condition"] != "service_completed_successfully" {
			t.Errorf("%s: does not wait for pair to finish", site)
		}
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

// TestComposeSitesEndToEnd proves the Compose demo's configurations work
// without Docker: it runs compose/pair.sh on this host with the real dyad
// (twice: the second run must keep the keys), `dyad check`s each rendered
// dyad.yaml as the containers would read it, then runs both sites as
// processes on loopback. Every compose address is replaced by a loopback
// one after checking that it names the right compose service on a network
// both ends share; the api container becomes an HTTP server here and the
// collector an OTLP/gRPC receiver. A request goes through site-a's forward
// to the API, and both sites' audit events must reach the receiver.
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
	pair := func() {
		t.Helper()
		cmd := exec.Command("sh", filepath.Join(templates, "pair.sh"))
		cmd.Env = append(os.Environ(), "DYAD="+bin, "TEMPLATES="+templates, "SITES="+sites)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pair.sh: %v\n%s", err, out)
		}
	}
	pair()
	keyA, _ := os.ReadFile(filepath.Join(sites, "site-a", "keys", "identity.key"))
	pair()
	if again, _ := os.ReadFile(filepath.Join(sites, "site-a", "keys", "identity.key")); string(again) != string(keyA) {
		t.Fatal("pair.sh replaced site-a's identity on its second run")
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

	var forward string
	for _, site := range []string{"site-b", "site-a"} { // site-b first: site-a dials it
		f := files[site]
		f.Listen = local(site, f.Listen, true)
		f.Admin = local(site, f.Admin, false)
		for i := range f.Forwards {
			_, port, _ := net.SplitHostPort(f.Forwards[i].Listen)
			if !slices.ContainsFunc(c.Services[site].Ports, func(p string) bool { return strings.Contains(p, ":"+port+":"+port) }) {
				t.Errorf("%s: forward port %s is not published", site, port)
			}
			f.Forwards[i].Listen = local(site, f.Forwards[i].Listen, false)
			forward = f.Forwards[i].Listen
		}
		for i := range f.Peers {
			if f.Peers[i].Endpoint != "" {
				f.Peers[i].Endpoint = reach(site, f.Peers[i].Endpoint)
			}
		}
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
		if !strings.HasPrefix(f.StateDir, "/var/lib/dyad/") {
			t.Fatalf("%s: state_dir %s is not on the /var/lib/dyad volume (/etc/dyad is read-only)", site, f.StateDir)
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
	}

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + forward + "/v1/payments/42")
	if err != nil {
		t.Fatalf("GET through site-a's forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "payments api: GET /v1/payments/42\n" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, body)
	}
	client.CloseIdleConnections()

	// Both sites' events reach the collector: the tunnel on each side and
	// the stream site-b opened to the API.
	err = otlp.WaitFor(10*time.Second, func(rs []audittest.Record) bool {
		seen := map[string]bool{}
		for _, r := range rs {
			if site := r.Resource["dyad.site"]; site != nil {
				seen[site.GetStringValue()+" "+r.Log.EventName] = true
			}
		}
		return seen["site-a "+audit.TunnelEstablished] && seen["site-b "+audit.TunnelEstablished] && seen["site-b "+audit.StreamOpened]
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
