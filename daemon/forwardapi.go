package daemon

import (
	"errors"
	"fmt"
	"path/filepath"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel"
)

// A forward with api: hands the pump a CheckedConn in place of the client.
var _ tunnel.LocalConn = (*apiguard.CheckedConn)(nil)

// forwardAPI loads a forward's spec (relative to the configuration file)
// into its response check; nil after a failure.
func (v *validator) forwardAPI(a ForwardAPIFile, fw ForwardConfig, path ...any) *apiguard.ResponsePolicy {
	at := func(more ...any) []any { return append(append([]any{}, path...), more...) }
	if a.Spec == "" {
		v.fail(errors.New("required: the partner's OpenAPI 3.0 or 3.1 document, relative to this file"), at("spec")...)
		return nil
	}
	response := false
	for j, w := range a.Validate {
		if w != "response" {
			v.fail(fmt.Errorf("%q is not response (a forward checks what the partner sends back; requests are checked by the partner's guard)", w), at("validate", j)...)
			return nil
		}
		response = true
	}
	if !response {
		v.fail(errors.New("required: [response]"), at("validate")...)
		return nil
	}
	if a.MaxBody < 0 {
		v.fail(errors.New("unlimited is not allowed: a validated body is buffered, so it needs a bound"), at("max_body")...)
		return nil
	}
	file := a.Spec
	if !filepath.IsAbs(file) {
		file = filepath.Join(filepath.Dir(v.path), file)
	}
	spec, err := apiguard.LoadSpec(file)
	if err != nil {
		v.fail(err, at("spec")...) // names the file and kin-openapi's own error
		return nil
	}
	return &apiguard.ResponsePolicy{Peer: fw.Peer, Service: fw.Service, Spec: spec, Block: a.Block, MaxBody: int64(a.MaxBody)}
}

// auditResponseInvalid records a response that broke the partner's
// contract: names and the schema keyword, never a value (THREATS P6,
// tested by TestForwardResponseValidation).
func (d *Daemon) auditResponseInvalid(p *apiguard.ResponsePolicy, f apiguard.ResponseFinding) {
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, p.Peer), attribute.String(audit.KeyService, p.Service)}
	if f.Operation != "" {
		attrs = append(attrs, attribute.String(audit.KeyAPIOperation, f.Operation), attribute.String(audit.KeyHTTPMethod, f.Method))
	}
	if f.Status != 0 {
		attrs = append(attrs, attribute.Int(audit.KeyHTTPStatus, f.Status))
	}
	attrs = append(attrs, attribute.String(audit.KeyReason, f.Reason))
	if f.Keyword != "" {
		attrs = append(attrs, attribute.String(audit.KeyAPIKeyword, f.Keyword))
	}
	action := "reported"
	if f.Blocked {
		action = "blocked"
	}
	d.au.auditor.Emit(audit.APIResponseInvalid, append(attrs, attribute.String(audit.KeyAPIAction, action))...)
	d.au.metrics.APIResponseInvalid(p.Peer, p.Service, f.Reason, action)
}

// forwardAPIStatus is a checked forward in /statusz: its spec and counts.
type forwardAPIStatus struct {
	Peer      string            `json:"peer"`
	Service   string            `json:"service"`
	Spec      string            `json:"spec"`
	SHA256    string            `json:"spec_sha256"`
	Block     bool              `json:"block"`
	Responses map[string]uint64 `json:"responses"`
}

// forwardAPIStatus lists the forwards with api: by listen address.
func (d *Daemon) forwardAPIStatus() map[string]forwardAPIStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]forwardAPIStatus{}
	for _, fl := range d.forwards {
		if c := fl.rules.Load().check; c != nil {
			out[fl.cfg.Listen] = forwardAPIStatus{Peer: c.Peer, Service: c.Service, Spec: c.Spec.File, SHA256: c.Spec.SHA256,
				Block: c.Block, Responses: fl.responses.Snapshot()}
		}
	}
	return out
}
