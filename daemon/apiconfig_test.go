package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// apiConfig is goodConfig with the payments service guarded by the spec in
// apiguard/testdata, copied beside the file (the spec path is relative).
func apiConfig(t *testing.T, api string) string {
	t.Helper()
	dir := t.TempDir()
	spec, err := os.ReadFile("../apiguard/testdata/payments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "payments-openapi.yaml"), spec, 0o644)
	path := filepath.Join(dir, "dyad.yaml")
	cfg := strings.Replace(goodConfig, "KEY", testKey(t), 1)
	cfg = strings.Replace(cfg, "    allow: [site-b]\n", "    allow: [site-b]\n"+api, 1)
	os.WriteFile(path, []byte(cfg), 0o644)
	return path
}

func TestAPIConfig(t *testing.T) {
	path := apiConfig(t, `    api:
      spec: payments-openapi.yaml
      operations: {site-b: [getPayment, "tag:refunds"]}
      validate: [request]
      limits:
        createRefund: {requests_per_second: 10, request_burst: 20}
        "*": {requests_per_second: 100}
      max_body: 64KiB
`)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	p := c.APIs["ledger"]
	if p == nil || !p.ValidateRequest || p.MaxBody != 64<<10 || len(p.Spec.SHA256) != 64 {
		t.Fatalf("policy %+v", p)
	}
	if ops := p.Allowed["site-b"]; len(ops) != 3 || !ops[p.Spec.Operation("getPayment")] || !ops[p.Spec.Operation("createRefund")] {
		t.Errorf("site-b's operations: %v", ops)
	}
	if r := p.Limits[p.Spec.Operation("createRefund")]; r.PerSecond != 10 || r.Burst != 20 {
		t.Errorf("createRefund limit %+v (the operationId wins over *)", r)
	}
	if r := p.Limits[p.Spec.Operation("health")]; r.PerSecond != 100 {
		t.Errorf("* limit %+v", r)
	}
	attrs := configAttrs(c)
	found := false
	for _, a := range attrs {
		if string(a.Key) == "dyad.api.spec_sha256" && a.Value.AsStringSlice()[0] == "ledger="+p.Spec.SHA256 {
			found = true
		}
	}
	if !found {
		t.Errorf("configuration event lacks the spec's SHA-256: %v", attrs)
	}

	for name, c := range map[string]struct{ api, field string }{
		"no spec":        {"    api: {validate: [request]}\n", "services[0].api.spec"},
		"missing file":   {"    api: {spec: nope.yaml}\n", "services[0].api.spec"},
		"unknown key":    {"    api: {spec: payments-openapi.yaml, validat: [request]}\n", "validat"},
		"bad validate":   {"    api: {spec: payments-openapi.yaml, validate: [response]}\n", "services[0].api.validate[0]"},
		"unknown peer":   {"    api: {spec: payments-openapi.yaml, operations: {site-c: [getPayment]}}\n", "services[0].api.operations.site-c"},
		"unknown op":     {"    api: {spec: payments-openapi.yaml, operations: {site-b: [getPaymnet]}}\n", "services[0].api.operations.site-b[0]"},
		"unknown tag":    {"    api: {spec: payments-openapi.yaml, limits: {\"tag:x\": {requests_per_second: 1}}}\n", "services[0].api.limits.tag:x"},
		"zero rate":      {"    api: {spec: payments-openapi.yaml, limits: {health: {request_burst: 1}}}\n", "requests_per_second"},
		"unlimited body": {"    api: {spec: payments-openapi.yaml, max_body: unlimited}\n", "services[0].api.max_body"},
	} {
		_, err := LoadConfig(apiConfig(t, c.api))
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCheckMalformedSpec: `dyad check` fails on a malformed spec, naming
// the spec file and kin-openapi's own error.
// TestAPIHostConfig: api.host is the Host the guard pins on every request
// it forwards (apiguard.TestGuardPinnedHost): a host, optionally ":port",
// carried in the policy; anything else (a scheme, a path, userinfo,
// spaces) is refused at load with the line, api.host and the service;
// `dyad check` shows it beside the spec.
func TestAPIHostConfig(t *testing.T) {
	for _, h := range []string{"payments.bank-b.internal", "payments.bank-b.internal:8443", "10.1.2.3:80", "[fd00::1]:443", "[fd00::1]", "payments_1.local"} {
		c, err := LoadConfig(apiConfig(t, "    api: {spec: payments-openapi.yaml, host: \""+h+"\"}\n"))
		if err != nil {
			t.Errorf("host %q: %v", h, err)
			continue
		}
		if p := c.APIs["ledger"]; p == nil || p.Host != h {
			t.Errorf("host %q: policy %+v", h, p)
		}
	}
	c, err := LoadConfig(apiConfig(t, "    api: {spec: payments-openapi.yaml}\n"))
	if err != nil || c.APIs["ledger"].Host != "" {
		t.Fatalf("without host: %v", err)
	}
	for _, h := range []string{"http://x", "x/y", "a b", "u@x", "x:", "x:0", "x:99999", "x:8a", "fd00::1", "x?y", "x#y", ":80", "[x]:80", "a\\tb"} {
		_, err := LoadConfig(apiConfig(t, "    api: {spec: payments-openapi.yaml, host: \""+h+"\"}\n"))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != "services[0].api.host" || ce.Line == 0 || !strings.Contains(err.Error(), "ledger") || !strings.Contains(err.Error(), "api.host") {
			t.Errorf("host %q: %v", h, err)
		}
	}

	path := apiConfig(t, "    api: {spec: payments-openapi.yaml, host: payments.bank-b.internal:8443}\n")
	var out strings.Builder
	if err := Keygen(filepath.Join(filepath.Dir(path), "keys"), &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := Check(path, &out); err != nil || !strings.Contains(out.String(), "Host payments.bank-b.internal:8443") {
		t.Errorf("check: %v\n%s", err, out.String())
	}
}

func TestCheckMalformedSpec(t *testing.T) {
	path := apiConfig(t, "    api: {spec: payments-openapi.yaml}\n")
	dir := filepath.Dir(path)
	var out strings.Builder
	if err := Keygen(filepath.Join(dir, "keys"), &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := Check(path, &out); err != nil || !strings.Contains(out.String(), "service ledger: API guard:") {
		t.Fatalf("check of a good spec: %v\n%s", err, out.String())
	}
	spec := filepath.Join(dir, "payments-openapi.yaml")
	good, _ := os.ReadFile(spec)
	os.WriteFile(spec, []byte(strings.Replace(string(good), "#/components/schemas/Refund", "#/components/schemas/Refnd", 1)), 0o644)
	err := Check(path, &out)
	if err == nil || !strings.Contains(err.Error(), spec) || !strings.Contains(err.Error(), "Refnd") || !strings.Contains(err.Error(), "services[0].api.spec") {
		t.Fatalf("check of a broken spec: %v", err)
	}
}
