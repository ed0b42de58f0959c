package check

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// rulePorts lists a rule's ports as "proto/port" (a named port resolved
// against the container), failing on a name the container lacks.
func rulePorts(t *testing.T, c *corev1.Container, ports []networkingv1.NetworkPolicyPort) []string {
	t.Helper()
	var out []string
	for _, p := range ports {
		if p.Protocol == nil || p.Port == nil {
			t.Errorf("NetworkPolicy port without protocol or port: %+v", p)
			continue
		}
		port := p.Port.String()
		if p.Port.Type == intstr.String {
			cp := containerPort(c, p.Port.StrVal)
			if cp == nil || cp.Protocol != *p.Protocol {
				t.Errorf("NetworkPolicy names port %s/%s, which the container does not have", *p.Protocol, p.Port.StrVal)
				continue
			}
			port = strconv.Itoa(int(cp.ContainerPort))
		}
		out = append(out, fmt.Sprintf("%s/%s", *p.Protocol, port))
	}
	return out
}

func ipBlocks(peers []networkingv1.NetworkPolicyPeer) []string {
	var out []string
	for _, p := range peers {
		if p.IPBlock != nil {
			out = append(out, p.IPBlock.CIDR)
		}
	}
	return out
}

// hostPortPort is the port of a host:port value.
func hostPortPort(s string) string { return s[strings.LastIndex(s, ":")+1:] }

// checkNetworkPolicy checks that each port is opened to whom the values say
// and no further, and that egress goes only where dyad dials.
func checkNetworkPolicy(t *testing.T, v *chartValues, m *manifests) {
	t.Helper()
	if !v.NetworkPolicy.Enabled {
		if len(m.policies) != 0 {
			t.Error("NetworkPolicy rendered while disabled")
		}
		return
	}
	if len(m.policies) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(m.policies))
	}
	np := m.policies[0]
	_, c := pod(t, m.deployment)
	if !selects(t, &np.Spec.PodSelector, m.deployment.Spec.Template.Labels) {
		t.Error("NetworkPolicy does not select the pods")
	}
	if want := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}; !slices.Equal(np.Spec.PolicyTypes, want) {
		t.Errorf("policyTypes %v, want %v", np.Spec.PolicyTypes, want)
	}

	ingress := map[string][]networkingv1.NetworkPolicyPeer{}
	for _, r := range np.Spec.Ingress {
		for _, p := range rulePorts(t, c, r.Ports) {
			if _, dup := ingress[p]; dup {
				t.Errorf("ingress port %s in two rules", p)
			}
			ingress[p] = r.From
		}
	}
	tunnel := fmt.Sprintf("UDP/%d", v.Ports.Tunnel)
	from, ok := ingress[tunnel]
	if !ok {
		t.Fatalf("no ingress rule for the tunnel port %s", tunnel)
	}
	wantFrom := v.peerCIDRs()
	for _, c := range v.NetworkPolicy.TunnelFrom {
		if !slices.Contains(wantFrom, c) {
			wantFrom = append(wantFrom, c)
		}
	}
	if got := ipBlocks(from); !slices.Equal(got, wantFrom) || len(got) != len(from) {
		t.Errorf("tunnel port admitted from %v, want ipBlocks %v", from, wantFrom)
	}
	tcpTunnel := fmt.Sprintf("TCP/%d", v.Ports.Tunnel)
	if from, ok := ingress[tcpTunnel]; ok != v.Tunnel.TCPListen {
		t.Errorf("ingress rule for the TCP tunnel port %s: %v, want %v (tunnel.tcp_listen)", tcpTunnel, ok, v.Tunnel.TCPListen)
	} else if got := ipBlocks(from); ok && (!slices.Equal(got, wantFrom) || len(got) != len(from)) {
		t.Errorf("TCP tunnel port admitted from %v, want ipBlocks %v", from, wantFrom)
	}
	admin := fmt.Sprintf("TCP/%d", v.Ports.Admin)
	if from, ok := ingress[admin]; ok != (len(v.NetworkPolicy.AdminNamespaces) > 0) {
		t.Errorf("admin port rule present %v with adminNamespaces %v", ok, v.NetworkPolicy.AdminNamespaces)
	} else {
		for _, p := range from {
			if p.NamespaceSelector == nil || p.IPBlock != nil {
				t.Errorf("admin port admitted from something not a namespace: %+v", p)
			}
		}
	}
	for _, f := range v.Forwards {
		if from, ok := ingress[fmt.Sprintf("TCP/%d", f.Port)]; !ok || len(from) == 0 {
			t.Errorf("forward port %d: no ingress rule limited to in-cluster clients", f.Port)
		}
	}
	if want := 1 + count(v.Tunnel.TCPListen) + min(1, len(v.NetworkPolicy.AdminNamespaces)) + len(v.Forwards); len(ingress) != want {
		t.Errorf("ingress opens %d ports, want %d: %v", len(ingress), want, slices.Collect(func(yield func(string) bool) {
			for k := range ingress {
				yield(k)
			}
		}))
	}

	egress := map[string][][]networkingv1.NetworkPolicyPeer{}
	for _, r := range np.Spec.Egress {
		for _, p := range rulePorts(t, c, r.Ports) {
			egress[p] = append(egress[p], r.To)
		}
		if len(r.Ports) == 0 {
			t.Errorf("egress rule without ports opens every port: %+v", r)
		}
	}
	if _, ok := egress["UDP/53"]; ok != v.NetworkPolicy.DNS.Enabled {
		t.Errorf("DNS egress %v, want %v", ok, v.NetworkPolicy.DNS.Enabled)
	}
	for _, p := range v.Peers {
		if p.Endpoint == "" || p.Transport == "tcp" {
			continue
		}
		rules := egress["UDP/"+hostPortPort(p.Endpoint)]
		if !slices.ContainsFunc(rules, func(to []networkingv1.NetworkPolicyPeer) bool { return slices.Equal(ipBlocks(to), p.CIDRs) }) {
			t.Errorf("peer %s: no UDP egress to %v on its endpoint's port", p.Name, p.CIDRs)
		}
	}
	for i, p := range v.Peers {
		if !v.dialsTCP(i) {
			continue
		}
		// transport tcp or auto dials the endpoint over TCP, or the proxy
		// (anywhere: the chart knows no CIDR of it).
		if p.Proxy != "" {
			if len(egress["TCP/"+hostPortPort(p.Proxy)]) == 0 {
				t.Errorf("peer %s: no TCP egress to its proxy %s", p.Name, p.Proxy)
			}
			continue
		}
		rules := egress["TCP/"+hostPortPort(p.Endpoint)]
		if !slices.ContainsFunc(rules, func(to []networkingv1.NetworkPolicyPeer) bool { return slices.Equal(ipBlocks(to), p.CIDRs) }) {
			t.Errorf("peer %s (transport %q): no TCP egress to %v on its endpoint's port", p.Name, p.Transport, p.CIDRs)
		}
	}
	for _, s := range v.Services {
		rules := egress["TCP/"+hostPortPort(s.Upstream)]
		if !slices.ContainsFunc(rules, func(to []networkingv1.NetworkPolicyPeer) bool { return slices.Equal(ipBlocks(to), s.CIDRs) }) {
			t.Errorf("service %s: no TCP egress to %v on its upstream's port", s.Name, s.CIDRs)
		}
	}
	if e := v.Audit.OTLP.Endpoint; e != "" {
		port := regexp.MustCompile(`:([0-9]+)(/|$)`).FindStringSubmatch(strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://"))
		if port == nil || len(egress["TCP/"+port[1]]) == 0 {
			t.Errorf("no egress to the collector %s", e)
		}
	}
}

// checkPolicyObjects checks the PodDisruptionBudget and the ServiceMonitor.
func checkPolicyObjects(t *testing.T, v *chartValues, m *manifests) {
	t.Helper()
	podLabels := m.deployment.Spec.Template.Labels
	if len(m.budgets) != count(v.PodDisruptionBudget.Enabled) {
		t.Fatalf("%d PodDisruptionBudgets with enabled %v", len(m.budgets), v.PodDisruptionBudget.Enabled)
	}
	for _, b := range m.budgets {
		if !selects(t, b.Spec.Selector, podLabels) {
			t.Error("PodDisruptionBudget does not select the pods")
		}
		if (b.Spec.MinAvailable == nil) == (b.Spec.MaxUnavailable == nil) {
			t.Error("PodDisruptionBudget must set exactly one of minAvailable and maxUnavailable")
		}
		if want := v.PodDisruptionBudget.MinAvailable; want != nil && (b.Spec.MinAvailable == nil || *b.Spec.MinAvailable != *want) {
			t.Errorf("minAvailable %v, want %v", b.Spec.MinAvailable, want)
		}
	}

	if len(m.monitors) != count(v.ServiceMonitor.Enabled) {
		t.Fatalf("%d ServiceMonitors with enabled %v", len(m.monitors), v.ServiceMonitor.Enabled)
	}
	promDuration := regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)
	for _, sm := range m.monitors {
		var picked []string
		for name, s := range m.services {
			if selects(t, &sm.Spec.Selector, s.Labels) {
				picked = append(picked, name)
			}
		}
		admin := releaseName + "-dyad-admin"
		if !slices.Equal(picked, []string{admin}) {
			t.Errorf("ServiceMonitor selects Services %v, want only %s", picked, admin)
		}
		if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
			t.Errorf("ServiceMonitor namespaceSelector %v", sm.Spec.NamespaceSelector.MatchNames)
		}
		if len(sm.Spec.Endpoints) != 1 {
			t.Fatalf("ServiceMonitor has %d endpoints", len(sm.Spec.Endpoints))
		}
		e := sm.Spec.Endpoints[0]
		if e.Port != m.services[admin].Spec.Ports[0].Name || e.Path != "/metrics" || e.Scheme != "http" {
			t.Errorf("ServiceMonitor endpoint %+v, want port admin, /metrics over http", e)
		}
		if !promDuration.MatchString(e.Interval) || !promDuration.MatchString(e.ScrapeTimeout) {
			t.Errorf("ServiceMonitor interval %q / scrapeTimeout %q are not Prometheus durations", e.Interval, e.ScrapeTimeout)
		}
	}
}

// count is how many objects an enabled switch renders.
func count(enabled bool) int {
	if enabled {
		return 1
	}
	return 0
}
