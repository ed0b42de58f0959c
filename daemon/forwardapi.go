package daemon

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/dyad-tunnel/dyad/apiguard"
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
