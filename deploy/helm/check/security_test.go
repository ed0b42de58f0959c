package check

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// checkMetadata applies the API server's name and label rules to every object.
func checkMetadata(t *testing.T, m *manifests) {
	t.Helper()
	for _, o := range m.all {
		name := o.GetName()
		errs := validation.IsDNS1123Subdomain(name)
		if _, ok := o.(*corev1.Service); ok {
			errs = validation.IsDNS1035Label(name)
		}
		for _, e := range errs {
			t.Errorf("%T %q: name: %s", o, name, e)
		}
		if o.GetLabels()["app.kubernetes.io/instance"] != releaseName {
			t.Errorf("%T %q: no app.kubernetes.io/instance label", o, name)
		}
		for k, v := range o.GetLabels() {
			for _, e := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
				t.Errorf("%T %q: label %s=%s: %s", o, name, k, v, e)
			}
		}
		for k := range o.GetAnnotations() {
			for _, e := range validation.IsQualifiedName(k) {
				t.Errorf("%T %q: annotation %s: %s", o, name, k, e)
			}
		}
	}
}

// checkSecurity asserts the pod's hardening, which values cannot weaken.
func checkSecurity(t *testing.T, v *chartValues, m *manifests) {
	t.Helper()
	spec, _ := pod(t, m.deployment)
	ps := spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot {
		t.Error("pod: runAsNonRoot is not true")
	}
	for name, pair := range map[string][2]*int64{"runAsUser": {v.PodSecurity.RunAsUser, ps.RunAsUser},
		"runAsGroup": {v.PodSecurity.RunAsGroup, ps.RunAsGroup}, "fsGroup": {v.PodSecurity.FSGroup, ps.FSGroup}} {
		want, got := pair[0], pair[1]
		switch {
		case want == nil && got != nil:
			t.Errorf("pod: %s %d, want unset", name, *got)
		case want != nil && (got == nil || *got != *want || *got == 0):
			t.Errorf("pod: %s %v, want %d (non-root)", name, got, *want)
		}
	}
	if ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod: seccompProfile is not RuntimeDefault")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("pod: automountServiceAccountToken is not false")
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("container %s: no securityContext", c.Name)
			continue
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
			t.Errorf("container %s: runAsNonRoot is not true", c.Name)
		case sc.Privileged == nil || *sc.Privileged:
			t.Errorf("container %s: privileged is not false", c.Name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("container %s: capabilities are not drop [ALL], add none", c.Name)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("container %s: seccompProfile is not RuntimeDefault", c.Name)
		case sc.RunAsUser != nil && *sc.RunAsUser == 0:
			t.Errorf("container %s: runs as root", c.Name)
		}
	}
	for name, sa := range m.accounts {
		if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("ServiceAccount %s: automountServiceAccountToken is not false", name)
		}
	}
	if v.ServiceAccount.Create {
		if _, ok := m.accounts[spec.ServiceAccountName]; !ok {
			t.Errorf("pod uses service account %q, which the chart does not render", spec.ServiceAccountName)
		}
	}
}

// checkIdentity follows the key from the Secret through the installer to
// the path in dyad.yaml: owner-only at every step.
func checkIdentity(t *testing.T, v *chartValues, m *manifests, cfg *dyadFile) {
	t.Helper()
	spec, c := pod(t, m.deployment)
	sv := volume(t, spec, "identity-secret").Secret
	if sv == nil {
		t.Fatal("volume identity-secret is not a Secret")
	}
	wantSecret := v.Identity.ExistingSecret
	if wantSecret == "" {
		wantSecret = releaseName + "-dyad-identity"
	}
	if sv.SecretName != wantSecret {
		t.Errorf("identity Secret %q, want %q", sv.SecretName, wantSecret)
	}
	if sv.DefaultMode == nil || *sv.DefaultMode != 0o400 {
		t.Errorf("identity Secret volume defaultMode %s, want 0400", octal(sv.DefaultMode))
	}
	if s, ok := m.secrets[wantSecret]; ok != (v.Identity.Key != "") {
		t.Errorf("chart renders Secret %s: %v, want %v (identity.key set)", wantSecret, ok, v.Identity.Key != "")
	} else if ok && string(s.Data[v.Identity.SecretKey]) != v.Identity.Key {
		t.Errorf("Secret %s[%s] is not identity.key", wantSecret, v.Identity.SecretKey)
	}
	for _, vm := range c.VolumeMounts {
		if vm.Name == "identity-secret" {
			t.Error("the dyad container mounts the Secret itself; it must read the installer's 0600 copy")
		}
	}
	mem := volume(t, spec, "identity").EmptyDir
	if mem == nil || mem.Medium != corev1.StorageMediumMemory {
		t.Error("volume identity is not an in-memory emptyDir")
	}
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want the key installer only", len(spec.InitContainers))
	}
	in := &spec.InitContainers[0]
	src := mountPath(t, in, "identity-secret") + "/" + v.Identity.SecretKey
	dst := cfg.Identity
	if want := []string{"install-key", "--from", src, "--to", dst}; len(in.Command) != 0 || !slices.Equal(in.Args, want) {
		t.Errorf("installer command %q args %q, want dyad's entrypoint with %q", in.Command, in.Args, want)
	}
	if in.Image != c.Image || in.ImagePullPolicy != c.ImagePullPolicy {
		t.Errorf("installer image %s (%s), want dyad's %s (%s)", in.Image, in.ImagePullPolicy, c.Image, c.ImagePullPolicy)
	}
	dir := mountPath(t, c, "identity")
	if mountPath(t, in, "identity") != dir || !strings.HasPrefix(dst, dir+"/") {
		t.Errorf("dyad.yaml identity %s is not in the identity volume (%s in both containers)", dst, dir)
	}
}
