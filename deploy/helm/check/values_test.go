package check

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// chartValues is the part of the final (defaults + overrides) values the
// assertions need to know what to expect.
type chartValues struct {
	ReplicaCount int32
	Identity     struct{ ExistingSecret, SecretKey, Key string }
	Ports        struct{ Tunnel, Admin int32 }
	FIPS         bool `json:"fips"`
	Peers        []struct {
		Name, Endpoint, Transport, Proxy string
		CIDRs                            []string `json:"cidrs"`
	}
	Tunnel struct {
		TCPListen bool `json:"tcp_listen"`
	}
	Services []struct {
		Name, Upstream string
		CIDRs          []string `json:"cidrs"`
	}
	Forwards []struct {
		Port          int32
		Peer, Service string
		Expose        *bool
	}
	Audit struct {
		OTLP struct {
			Endpoint string
			TLS      struct {
				SecretName string
				ClientCert bool
			}
		} `json:"otlp"`
	}
	Persistence struct {
		Enabled       bool
		ExistingClaim string
		Keep          bool
	}
	Service struct {
		Type                     corev1.ServiceType
		Port                     int32
		LoadBalancerSourceRanges []string
	}
	ForwardService struct{ Enabled bool }
	ServiceMonitor struct{ Enabled bool }
	NetworkPolicy  struct {
		Enabled         bool
		TunnelFrom      []string
		AdminNamespaces []string
		DNS             struct{ Enabled bool }
	}
	PodDisruptionBudget struct {
		Enabled                      bool
		MaxUnavailable, MinAvailable *intstr.IntOrString
	}
	ServiceAccount struct{ Create bool }
	PodSecurity    struct{ RunAsUser, RunAsGroup, FSGroup *int64 }
	Resources      corev1.ResourceRequirements
}

func parseValues(t *testing.T, final map[string]any) *chartValues {
	t.Helper()
	b, err := json.Marshal(final)
	if err != nil {
		t.Fatal(err)
	}
	var v chartValues
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("final values: %v", err)
	}
	return &v
}

func (v *chartValues) exposed() []int32 {
	var ports []int32
	for _, f := range v.Forwards {
		if f.Expose == nil || *f.Expose {
			ports = append(ports, f.Port)
		}
	}
	return ports
}

// dialsTCP reports whether dyad may dial peer i over TCP: its transport is
// tcp or auto (the default), and it has an endpoint.
func (v *chartValues) dialsTCP(i int) bool {
	p := v.Peers[i]
	return p.Endpoint != "" && p.Transport != "quic"
}

func (v *chartValues) peerCIDRs() []string {
	var out []string
	for _, p := range v.Peers {
		for _, c := range p.CIDRs {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}

// dyadFile is the part of the rendered dyad.yaml the assertions read; `dyad
// check` validates all of it.
type dyadFile struct {
	Identity string
	StateDir string `json:"state_dir"`
	Listen   string
	Admin    string
	Tunnel   struct {
		TCPListen bool `json:"tcp_listen"`
	}
	FIPS     bool `json:"fips"`
	Forwards []struct{ Listen string }
	Audit    struct {
		Journal struct{ Dir string }
		OTLP    *struct {
			CAFile   string `json:"ca_file"`
			CertFile string `json:"cert_file"`
			KeyFile  string `json:"key_file"`
		} `json:"otlp"`
	}
}

// parseDyadFile reads the rendered dyad.yaml from the pod's ConfigMap.
func parseDyadFile(t *testing.T, m *manifests) (string, *dyadFile) {
	t.Helper()
	spec, _ := pod(t, m.deployment)
	cm := m.configMaps[volume(t, spec, "config").ConfigMap.Name]
	if cm == nil {
		t.Fatal("the pod's ConfigMap is not rendered")
	}
	text := cm.Data["dyad.yaml"]
	var f dyadFile
	if err := yaml.Unmarshal([]byte(text), &f); err != nil {
		t.Fatalf("dyad.yaml: %v\n%s", err, text)
	}
	return text, &f
}

// pod gives the Deployment's pod template and its dyad container.
func pod(t *testing.T, d *appsv1.Deployment) (*corev1.PodSpec, *corev1.Container) {
	t.Helper()
	spec := &d.Spec.Template.Spec
	for i := range spec.Containers {
		if spec.Containers[i].Name == "dyad" {
			return spec, &spec.Containers[i]
		}
	}
	t.Fatal("no dyad container")
	return nil, nil
}

func mountPath(t *testing.T, c *corev1.Container, volume string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	t.Fatalf("container %s does not mount volume %s", c.Name, volume)
	return ""
}

func volume(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Volume {
	t.Helper()
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	t.Fatalf("no volume %s", name)
	return nil
}

func containerPort(c *corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}

func selects(t *testing.T, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector: %v", err)
	}
	return !s.Empty() && s.Matches(labels.Set(podLabels))
}

func octal(mode *int32) string {
	if mode == nil {
		return "unset"
	}
	return fmt.Sprintf("%04o", *mode)
}
