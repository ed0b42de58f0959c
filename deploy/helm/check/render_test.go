package check

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../dyad"
	releaseName = "site"
	namespace   = "dyad"
	// kubeVersion is the cluster the chart is rendered for: the oldest its
	// Chart.yaml accepts would hide deprecations, so a current one.
	kubeVersion = "v1.33.0"
)

// loadChart loads the chart from disk, as `helm install ./dyad` would.
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

// capabilities is a cluster of kubeVersion that serves the Prometheus
// Operator's CRDs.
func capabilities(t *testing.T) *chartutil.Capabilities {
	t.Helper()
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps.KubeVersion = *kv
	caps.APIVersions = append(caps.APIVersions, "monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor")
	return caps
}

// render renders the chart with vals as `helm install --dry-run` does:
// schema validation first, then the templates. Strict mode makes a template
// that reads a value missing from the values an error, so a misspelt
// .Values path cannot render as empty.
func render(t *testing.T, ch *chart.Chart, vals map[string]any) (map[string]string, chartutil.Values, error) {
	t.Helper()
	opts := chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, capabilities(t))
	if err != nil {
		return nil, nil, err
	}
	out, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		return nil, nil, err
	}
	final, err := rv.Table("Values")
	return out, final, err
}

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor the
// chart writes. The Prometheus Operator's Go types would add a module tree
// for one object; decoding strictly into this subset still makes a field the
// chart invents, or puts in the wrong place, an error.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port              string           `json:"port"`
			Path              string           `json:"path"`
			Scheme            string           `json:"scheme"`
			Interval          string           `json:"interval"`
			ScrapeTimeout     string           `json:"scrapeTimeout"`
			Relabelings       []map[string]any `json:"relabelings,omitempty"`
			MetricRelabelings []map[string]any `json:"metricRelabelings,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifests is one rendering of the chart, decoded.
type manifests struct {
	deployment *appsv1.Deployment
	services   map[string]*corev1.Service
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	claims     map[string]*corev1.PersistentVolumeClaim
	accounts   map[string]*corev1.ServiceAccount
	budgets    []*policyv1.PodDisruptionBudget
	policies   []*networkingv1.NetworkPolicy
	monitors   []*serviceMonitor
	all        []metav1.Object
	notes      string
}

// strictDecoder decodes the built-in kinds the chart may render; strict
// mode turns unknown and duplicate fields into errors.
var strictDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// decode sorts the rendered files into typed objects.
func decode(out map[string]string) (*manifests, error) {
	m := &manifests{services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, claims: map[string]*corev1.PersistentVolumeClaim{},
		accounts: map[string]*corev1.ServiceAccount{}}
	names := map[string]bool{}
	files := slices.Sorted(func(yield func(string) bool) {
		for k := range out {
			if !yield(k) {
				return
			}
		}
	})
	for _, file := range files {
		if path.Base(file) == "NOTES.txt" {
			m.notes = out[file]
			continue
		}
		for _, doc := range releaseutil.SplitManifests(out[file]) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			obj, err := decodeOne(tm, doc)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", file, tm.Kind, err)
			}
			meta, ok := obj.(metav1.Object)
			if !ok {
				return nil, fmt.Errorf("%s: %T has no metadata", file, obj)
			}
			key := tm.Kind + "/" + meta.GetName()
			if names[key] {
				return nil, fmt.Errorf("%s: %s rendered twice", file, key)
			}
			names[key] = true
			m.all = append(m.all, meta)
			if err := m.add(obj); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
		}
	}
	return m, nil
}

func decodeOne(tm metav1.TypeMeta, doc string) (any, error) {
	if tm.APIVersion == "monitoring.coreos.com/v1" && tm.Kind == "ServiceMonitor" {
		sm := &serviceMonitor{}
		return sm, yaml.UnmarshalStrict([]byte(doc), sm)
	}
	obj, _, err := strictDecoder.Decode([]byte(doc), nil, nil)
	return obj, err
}

func (m *manifests) add(obj any) error {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if m.deployment != nil {
			return fmt.Errorf("a second Deployment %s", o.Name)
		}
		m.deployment = o
	case *corev1.Service:
		m.services[o.Name] = o
	case *corev1.ConfigMap:
		m.configMaps[o.Name] = o
	case *corev1.Secret:
		m.secrets[o.Name] = o
	case *corev1.PersistentVolumeClaim:
		m.claims[o.Name] = o
	case *corev1.ServiceAccount:
		m.accounts[o.Name] = o
	case *policyv1.PodDisruptionBudget:
		m.budgets = append(m.budgets, o)
	case *networkingv1.NetworkPolicy:
		m.policies = append(m.policies, o)
	case *serviceMonitor:
		m.monitors = append(m.monitors, o)
	default:
		return fmt.Errorf("unexpected kind %T", obj)
	}
	return nil
}
