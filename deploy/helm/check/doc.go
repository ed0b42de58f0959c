// Package check holds no code: its tests check the dyad Helm chart in
// ../dyad with Helm's own Go packages. They lint the chart strictly, render
// it with the default values and several value sets, decode every manifest
// strictly into the Kubernetes API types (an unknown or duplicate field is an
// error), assert the pod's security and the ports, volumes and policies the
// daemon needs, and run the real `dyad check` on the rendered dyad.yaml.
// Value sets that must be refused (testdata/bad) must fail the schema or the
// chart's own checks.
//
// It is a module of its own so that the root module's `go test ./...` and
// go.mod stay free of Helm and Kubernetes; `make helm-check` runs it.
package check
