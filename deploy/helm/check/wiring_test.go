package check

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// checkDeployment checks the pod's wiring: config, journal, ports, probes.
func checkDeployment(t *testing.T, v *chartValues, m *manifests, cfg *dyadFile) {
	t.Helper()
	d := m.deployment
	if d.Spec.Replicas == nil || *d.Spec.Replicas != v.ReplicaCount {
		t.Errorf("replicas %v, want %d", d.Spec.Replicas, v.ReplicaCount)
	}
	if !selects(t, d.Spec.Selector, d.Spec.Template.Labels) {
		t.Error("the Deployment's selector does not select its pods")
	}
	wantStrategy := appsv1.RollingUpdateDeploymentStrategyType
	if v.Persistence.Enabled {
		wantStrategy = appsv1.RecreateDeploymentStrategyType
	}
	if d.Spec.Strategy.Type != wantStrategy {
		t.Errorf("strategy %s, want %s", d.Spec.Strategy.Type, wantStrategy)
	}
	if sum := d.Spec.Template.Annotations["checksum/config"]; !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sum) {
		t.Errorf("checksum/config annotation %q", sum)
	}
	spec, c := pod(t, d)
	imageRef := regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$`)
	for _, ct := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if !imageRef.MatchString(ct.Image) || !strings.ContainsAny(ct.Image[strings.LastIndex(ct.Image, "/")+1:], ":@") {
			t.Errorf("container %s: image %q is not repository:tag or repository@digest", ct.Name, ct.Image)
		}
	}

	seen := map[string]bool{}
	for _, vol := range spec.Volumes {
		if seen[vol.Name] {
			t.Errorf("volume %s twice", vol.Name)
		}
		seen[vol.Name] = true
	}
	for _, ct := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		for _, vm := range ct.VolumeMounts {
			if !seen[vm.Name] {
				t.Errorf("container %s mounts unknown volume %s", ct.Name, vm.Name)
			}
		}
	}

	cm := volume(t, spec, "config").ConfigMap
	if cm == nil {
		t.Fatal("volume config is not a ConfigMap")
	}
	if _, ok := m.configMaps[cm.Name].Data["dyad.yaml"]; !ok {
		t.Errorf("ConfigMap %s with dyad.yaml is not rendered", cm.Name)
	}
	if want := []string{"run", "--config", mountPath(t, c, "config") + "/dyad.yaml"}; !slices.Equal(c.Args, want) {
		t.Errorf("args %q, want %q", c.Args, want)
	}
	if len(c.Command) != 0 {
		t.Errorf("command %q overrides the image's dyad entrypoint", c.Command)
	}

	jv := volume(t, spec, "journal")
	if !strings.HasPrefix(cfg.StateDir, mountPath(t, c, "journal")+"/") {
		t.Errorf("dyad.yaml state_dir %q is not on the journal volume %s (the root file system is read-only)", cfg.StateDir, mountPath(t, c, "journal"))
	}
	if cfg.Audit.Journal.Dir != mountPath(t, c, "journal") {
		t.Errorf("dyad.yaml audit.journal.dir %s is not the journal volume's mount %s", cfg.Audit.Journal.Dir, mountPath(t, c, "journal"))
	}
	if v.Persistence.Enabled {
		claim := v.Persistence.ExistingClaim
		if claim == "" {
			claim = releaseName + "-dyad-journal"
			pvc, ok := m.claims[claim]
			if !ok {
				t.Fatalf("claim %s is not rendered", claim)
			}
			if keep := pvc.Annotations["helm.sh/resource-policy"] == "keep"; keep != v.Persistence.Keep {
				t.Errorf("claim %s kept on uninstall: %v, want %v", claim, keep, v.Persistence.Keep)
			}
		}
		if jv.PersistentVolumeClaim == nil || jv.PersistentVolumeClaim.ClaimName != claim {
			t.Errorf("journal volume is not claim %s", claim)
		}
	} else if jv.EmptyDir == nil || jv.EmptyDir.SizeLimit == nil {
		t.Error("journal volume is not a size-limited emptyDir")
	}
	if len(m.claims) > 0 && (!v.Persistence.Enabled || v.Persistence.ExistingClaim != "") {
		t.Error("a claim is rendered that the pod does not use")
	}

	names := map[string]bool{}
	for _, p := range c.Ports {
		for _, e := range validation.IsValidPortName(p.Name) {
			t.Errorf("container port name %s: %s", p.Name, e)
		}
		if names[p.Name] {
			t.Errorf("container port %s twice", p.Name)
		}
		names[p.Name] = true
	}
	wantPort := func(name string, proto corev1.Protocol, port int32, listen string) {
		t.Helper()
		p := containerPort(c, name)
		if p == nil || p.Protocol != proto || p.ContainerPort != port {
			t.Errorf("container port %s: %+v, want %s %d", name, p, proto, port)
		}
		if want := fmt.Sprintf(":%d", port); listen != want {
			t.Errorf("dyad.yaml listens on %s for port %s, want %s", listen, name, want)
		}
	}
	wantPort("tunnel", corev1.ProtocolUDP, v.Ports.Tunnel, cfg.Listen)
	wantPort("admin", corev1.ProtocolTCP, v.Ports.Admin, cfg.Admin)
	// tunnel.tcp_listen: true listens on listen's port over TCP as well.
	if cfg.Tunnel.TCPListen != v.Tunnel.TCPListen {
		t.Errorf("dyad.yaml tunnel.tcp_listen %v, want %v", cfg.Tunnel.TCPListen, v.Tunnel.TCPListen)
	}
	if v.Tunnel.TCPListen {
		wantPort("tunnel-tcp", corev1.ProtocolTCP, v.Ports.Tunnel, cfg.Listen)
	} else if p := containerPort(c, "tunnel-tcp"); p != nil {
		t.Errorf("container port tunnel-tcp %+v without tunnel.tcp_listen", p)
	}
	if len(cfg.Forwards) != len(v.Forwards) {
		t.Fatalf("dyad.yaml has %d forwards, want %d", len(cfg.Forwards), len(v.Forwards))
	}
	for i, f := range v.Forwards {
		wantPort(fmt.Sprintf("fwd-%d", f.Port), corev1.ProtocolTCP, f.Port, cfg.Forwards[i].Listen)
	}
	if len(c.Ports) != 2+count(v.Tunnel.TCPListen)+len(v.Forwards) {
		t.Errorf("%d container ports, want %d", len(c.Ports), 2+count(v.Tunnel.TCPListen)+len(v.Forwards))
	}

	for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port != intstr.FromString("admin") {
			t.Errorf("probe %s on the admin port missing: %+v", want, probe)
		}
	}

	mem := ""
	if q, ok := v.Resources.Limits[corev1.ResourceMemory]; ok {
		if s := q.String(); strings.HasSuffix(s, "Mi") || strings.HasSuffix(s, "Gi") {
			mem = fmt.Sprintf("%dMiB", q.Value()>>20*9/10)
		}
	}
	got := ""
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			got = e.Value
		}
	}
	if got != mem {
		t.Errorf("GOMEMLIMIT %q, want %q", got, mem)
	}
	// fips: the configuration requires the mode and the container turns it on.
	godebug := ""
	for _, e := range c.Env {
		if e.Name == "GODEBUG" {
			godebug = e.Value
		}
	}
	if cfg.FIPS != v.FIPS || (godebug == "fips140=on") != v.FIPS {
		t.Errorf("fips %v: dyad.yaml fips %v, GODEBUG %q", v.FIPS, cfg.FIPS, godebug)
	}

	if v.Audit.OTLP.TLS.SecretName != "" {
		dir := mountPath(t, c, "otlp-tls")
		o := cfg.Audit.OTLP
		if o == nil || o.CAFile != dir+"/ca.crt" {
			t.Errorf("dyad.yaml audit.otlp.ca_file is not %s/ca.crt", dir)
		} else if v.Audit.OTLP.TLS.ClientCert && (o.CertFile != dir+"/tls.crt" || o.KeyFile != dir+"/tls.key") {
			t.Errorf("dyad.yaml audit.otlp cert_file/key_file are not in %s", dir)
		}
	}
}

// checkServices checks the tunnel, admin and forwards Services against the
// pod's ports.
func checkServices(t *testing.T, v *chartValues, m *manifests) {
	t.Helper()
	_, c := pod(t, m.deployment)
	podLabels := m.deployment.Spec.Template.Labels
	for name, s := range m.services {
		if !selects(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, podLabels) {
			t.Errorf("Service %s does not select the pods", name)
		}
		for _, p := range s.Spec.Ports {
			cp := containerPort(c, p.TargetPort.StrVal)
			if p.TargetPort.Type != intstr.String || cp == nil || cp.Protocol != p.Protocol {
				t.Errorf("Service %s port %s: targetPort %s is not a %s container port", name, p.Name, p.TargetPort.String(), p.Protocol)
			}
		}
		external := s.Spec.Type == corev1.ServiceTypeLoadBalancer || s.Spec.Type == corev1.ServiceTypeNodePort
		if s.Spec.ExternalTrafficPolicy != "" && !external {
			t.Errorf("Service %s: externalTrafficPolicy on a %s Service is refused by the API server", name, s.Spec.Type)
		}
	}

	tunnel := m.services[releaseName+"-dyad"]
	wantPorts := 1 + count(v.Tunnel.TCPListen)
	if tunnel == nil || len(tunnel.Spec.Ports) != wantPorts {
		t.Fatalf("tunnel Service missing or not %d port(s): %+v", wantPorts, tunnel)
	}
	if p := tunnel.Spec.Ports[0]; p.Protocol != corev1.ProtocolUDP || p.Port != v.Service.Port || p.TargetPort.StrVal != "tunnel" {
		t.Errorf("tunnel Service port %+v, want UDP %d -> tunnel", p, v.Service.Port)
	}
	// The TCP fallback: partners dial the same address and port over TCP.
	if v.Tunnel.TCPListen {
		if p := tunnel.Spec.Ports[1]; p.Protocol != corev1.ProtocolTCP || p.Port != v.Service.Port || p.TargetPort.StrVal != "tunnel-tcp" {
			t.Errorf("tunnel Service port %+v, want TCP %d -> tunnel-tcp", p, v.Service.Port)
		}
	}
	if tunnel.Spec.Type != v.Service.Type {
		t.Errorf("tunnel Service type %s, want %s", tunnel.Spec.Type, v.Service.Type)
	}
	if tunnel.Spec.Type == corev1.ServiceTypeLoadBalancer {
		want := v.Service.LoadBalancerSourceRanges
		if want == nil {
			want = v.peerCIDRs()
		}
		if !slices.Equal(tunnel.Spec.LoadBalancerSourceRanges, want) && len(want)+len(tunnel.Spec.LoadBalancerSourceRanges) > 0 {
			t.Errorf("loadBalancerSourceRanges %v, want %v", tunnel.Spec.LoadBalancerSourceRanges, want)
		}
	}

	admin := m.services[releaseName+"-dyad-admin"]
	if admin == nil || admin.Spec.Type != corev1.ServiceTypeClusterIP || len(admin.Spec.Ports) != 1 ||
		admin.Spec.Ports[0].Protocol != corev1.ProtocolTCP || admin.Spec.Ports[0].Port != v.Ports.Admin {
		t.Errorf("admin Service is not ClusterIP TCP %d: %+v", v.Ports.Admin, admin)
	}

	fw := m.services[releaseName+"-dyad-forwards"]
	exposed := v.exposed()
	if want := v.ForwardService.Enabled && len(exposed) > 0; (fw != nil) != want {
		t.Fatalf("forwards Service rendered: %v, want %v", fw != nil, want)
	}
	if fw != nil {
		var got []int32
		for _, p := range fw.Spec.Ports {
			if p.Protocol != corev1.ProtocolTCP {
				t.Errorf("forwards Service port %s is %s", p.Name, p.Protocol)
			}
			got = append(got, p.Port)
		}
		if !slices.Equal(got, exposed) {
			t.Errorf("forwards Service ports %v, want %v", got, exposed)
		}
	}
	want := 2 // tunnel and admin
	if fw != nil {
		want++
	}
	if len(m.services) != want {
		t.Errorf("%d Services, want %d", len(m.services), want)
	}
}
