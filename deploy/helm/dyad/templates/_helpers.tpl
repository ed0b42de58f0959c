{{/*
Names, labels and the rendered dyad.yaml. Paths inside the pod are fixed here so that the
ConfigMap, the Deployment and the NetworkPolicy agree. Optional keys of list entries and keys a user
may null out (Helm then deletes them) are read with `get`, so the chart renders under
`helm template --strict` semantics too.
*/}}

{{- define "dyad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dyad.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the other objects: a suffix on the full name, kept under 63 characters. */}}
{{- define "dyad.suffixed" -}}
{{- printf "%s-%s" (include "dyad.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "dyad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dyad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dyad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dyad.labels" -}}
helm.sh/chart: {{ include "dyad.chart" . }}
{{ include "dyad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dyad
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dyad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dyad.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the digest, when set, is what the runtime pulls. */}}
{{- define "dyad.imageRef" -}}
{{- $ref := .image.repository }}
{{- with .image.tag | default .default | toString }}{{ $ref = printf "%s:%s" $ref . }}{{ end }}
{{- with .image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}

{{- define "dyad.site" -}}
{{- .Values.site | default (include "dyad.fullname" .) }}
{{- end }}

{{- define "dyad.secretName" -}}
{{- .Values.identity.existingSecret | default (include "dyad.suffixed" (dict "root" . "suffix" "identity")) }}
{{- end }}

{{- define "dyad.configDir" }}/etc/dyad/config{{ end }}
{{- define "dyad.keyDir" }}/run/dyad/identity{{ end }}
{{- define "dyad.secretDir" }}/run/dyad/secret{{ end }}
{{- define "dyad.journalDir" }}/var/lib/dyad/audit{{ end }}
{{- /* The state directory (enrolled peers, invitations, the control socket) lives on the journal volume. */}}
{{- define "dyad.stateDir" }}/var/lib/dyad/audit/state{{ end }}
{{- define "dyad.otlpTLSDir" }}/etc/dyad/otlp-tls{{ end }}

{{/*
"true" when dyad listens for the TCP fallback (tunnel.tcp_listen: true, on ports.tunnel), else empty.
*/}}
{{- define "dyad.tcpListen" -}}
{{- if and .Values.tunnel (eq (get .Values.tunnel "tcp_listen" | toString) "true") }}true{{ end }}
{{- end }}

{{/* The port of a host:port string (the last colon's suffix), as an int. */}}
{{- define "dyad.portOf" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{/*
The OTLP collector's port: the endpoint URL's, or the scheme's default.
*/}}
{{- define "dyad.collectorPort" -}}
{{- $u := urlParse .Values.audit.otlp.endpoint }}
{{- if regexMatch ":[0-9]+$" $u.host }}{{ include "dyad.portOf" $u.host }}
{{- else if eq $u.scheme "http" }}80
{{- else }}443
{{- end }}
{{- end }}

{{/* The forwards published on the forwards Service. */}}
{{- define "dyad.exposedForwards" -}}
{{- $out := list }}
{{- range .Values.forwards }}
{{- if ne (toString (get . "expose")) "false" }}{{ $out = append $out . }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Every peer CIDR, deduplicated: the LoadBalancer's and the NetworkPolicy's sources. */}}
{{- define "dyad.peerCIDRs" -}}
{{- $out := list }}
{{- range .Values.peers }}{{ $out = concat $out (get . "cidrs" | default list) }}{{ end }}
{{- toJson (uniq $out) }}
{{- end }}

{{/*
GOMEMLIMIT at 90% of limits.memory when it is written in Mi or Gi, so the Go collector works harder
before the kernel's OOM killer would; other notations leave Go's default.
*/}}
{{- define "dyad.gomemlimit" -}}
{{- $m := toString (dig "limits" "memory" "" .Values.resources) }}
{{- $mib := 0 }}
{{- if regexMatch "^[0-9]+Gi$" $m }}{{ $mib = mul (atoi (trimSuffix "Gi" $m)) 1024 }}
{{- else if regexMatch "^[0-9]+Mi$" $m }}{{ $mib = atoi (trimSuffix "Mi" $m) }}
{{- end }}
{{- if gt (int $mib) 0 }}{{ printf "%dMiB" (div (mul $mib 9) 10) }}{{ end }}
{{- end }}

{{/*
Checks that need more than one value; the schema checks each value alone.
*/}}
{{- define "dyad.validate" -}}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "persistence.enabled with replicaCount > 1: every instance needs its own audit journal and one claim cannot hold two (README \"Scaling\"); run one release per instance" }}
{{- end }}
{{- if and .Values.identity.key .Values.identity.existingSecret }}
{{- fail "identity.key and identity.existingSecret are both set: give the key file one way" }}
{{- end }}
{{- if and .Values.audit.otlp.tls.clientCert (not .Values.audit.otlp.tls.secretName) }}
{{- fail "audit.otlp.tls.clientCert needs audit.otlp.tls.secretName" }}
{{- end }}
{{- /* dyad refuses to start on an unset ${NAME}; say so at install time instead. */}}
{{- $env := list }}
{{- range .Values.extraEnv }}{{ $env = append $env .name }}{{ end }}
{{- if not .Values.envFrom }}
{{- range $header, $value := .Values.audit.otlp.headers }}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" $value -1 }}
{{- $name := trimSuffix "}" (trimPrefix "${" .) }}
{{- if not (has $name $env) }}
{{- fail (printf "audit.otlp.headers.%s uses ${%s}, which extraEnv does not set" $header $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports := dict (toString .Values.ports.tunnel) "ports.tunnel" }}
{{- if hasKey $ports (toString .Values.ports.admin) }}
{{- fail (printf "ports.admin %v is also ports.tunnel" .Values.ports.admin) }}
{{- end }}
{{- $_ := set $ports (toString .Values.ports.admin) "ports.admin" }}
{{- range $i, $f := .Values.forwards }}
{{- $p := toString $f.port }}
{{- if hasKey $ports $p }}
{{- fail (printf "forwards[%d].port %s is already %s" $i $p (get $ports $p)) }}
{{- end }}
{{- $_ := set $ports $p (printf "forwards[%d].port" $i) }}
{{- end }}
{{- end }}

{{/*
dyad.yaml, built as a dict and written with toYaml so that every value is quoted correctly. Keys the
chart owns (identity, listen, admin, audit.journal.dir, the OTLP TLS files) come from the pod layout;
the rest is the values' dyad keys minus the chart-only ones (cidrs, port, expose).
*/}}
{{- define "dyad.config" -}}
{{- $v := .Values }}
{{- $cfg := dict
    "site" (include "dyad.site" .)
    "identity" (printf "%s/identity.key" (include "dyad.keyDir" .))
    "listen" (printf ":%d" (int $v.ports.tunnel))
    "admin" (printf ":%d" (int $v.ports.admin))
    "log" $v.log
    "state_dir" (include "dyad.stateDir" .) }}
{{- with $v.tunnel }}{{ $_ := set $cfg "tunnel" . }}{{ end }}
{{- if $v.fips }}{{ $_ := set $cfg "fips" true }}{{ end }}
{{- with $v.tls }}{{ $_ := set $cfg "tls" . }}{{ end }}
{{- with $v.identityMaxAge }}{{ $_ := set $cfg "identity_max_age" . }}{{ end }}
{{- $peers := list }}
{{- range $v.peers }}{{ $peers = append $peers (omit . "cidrs") }}{{ end }}
{{- with $peers }}{{ $_ := set $cfg "peers" . }}{{ end }}
{{- $services := list }}
{{- range $v.services }}{{ $services = append $services (omit . "cidrs") }}{{ end }}
{{- with $services }}{{ $_ := set $cfg "services" . }}{{ end }}
{{- $forwards := list }}
{{- range $v.forwards }}
{{- $f := omit . "port" "expose" }}
{{- $_ := set $f "listen" (printf ":%d" (int .port)) }}
{{- $forwards = append $forwards $f }}
{{- end }}
{{- with $forwards }}{{ $_ := set $cfg "forwards" . }}{{ end }}
{{- $journal := merge (dict "dir" (include "dyad.journalDir" .)) $v.audit.journal }}
{{- $audit := dict "console" $v.audit.console "journal" $journal }}
{{- with $v.audit.summary_interval }}{{ $_ := set $audit "summary_interval" . }}{{ end }}
{{- $o := $v.audit.otlp }}
{{- if $o.endpoint }}
{{- $otlp := dict "endpoint" $o.endpoint "protocol" $o.protocol }}
{{- if $o.insecure }}{{ $_ := set $otlp "insecure" true }}{{ end }}
{{- with $o.headers }}{{ $_ := set $otlp "headers" . }}{{ end }}
{{- range $k := list "queue_size" "batch_size" "batch_interval" "timeout" "retry_for" "metrics_interval" }}
{{- with get $o $k }}{{ $_ := set $otlp $k . }}{{ end }}
{{- end }}
{{- if $o.tls.secretName }}
{{- $_ := set $otlp "ca_file" (printf "%s/ca.crt" (include "dyad.otlpTLSDir" $)) }}
{{- if $o.tls.clientCert }}
{{- $_ := set $otlp "cert_file" (printf "%s/tls.crt" (include "dyad.otlpTLSDir" $)) }}
{{- $_ := set $otlp "key_file" (printf "%s/tls.key" (include "dyad.otlpTLSDir" $)) }}
{{- end }}
{{- end }}
{{- $_ := set $audit "otlp" $otlp }}
{{- end }}
{{- $_ := set $cfg "audit" $audit }}
{{- toYaml $cfg }}
{{- end }}

{{/* The containers' security context: not configurable, dyad needs none of what it drops. */}}
{{- define "dyad.containerSecurityContext" -}}
runAsNonRoot: true
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
