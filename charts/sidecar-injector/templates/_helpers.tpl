{{/* The chart name, truncated to the 63 characters a label allows. */}}
{{- define "sidecar-injector.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, with the chart name unless it already has it. */}}
{{- define "sidecar-injector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "sidecar-injector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{ include "sidecar-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the webhook's pods. */}}
{{- define "sidecar-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Whether the webhook runs in the cluster (false when webhook.url points outside). */}}
{{- define "sidecar-injector.inCluster" -}}
{{- if .Values.webhook.url -}}{{- else -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the serving key pair. */}}
{{- define "sidecar-injector.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{- required "certificates.secretName is required with certificates.mode=secret" .Values.certificates.secretName -}}
{{- else -}}
{{- printf "%s-tls" (include "sidecar-injector.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces neither the webhook nor the guard ever sees. */}}
{{- define "sidecar-injector.excludedNamespaces" -}}
[kube-system, kube-public, kube-node-lease, {{ .Release.Namespace | quote }}]
{{- end -}}

{{/*
The CA and serving pair for certificates.mode=generate, made once and kept: an existing Secret
is looked up and reused unless certificates.rotate is set. Returns a dict: caCert, tlsCert, tlsKey.
*/}}
{{- define "sidecar-injector.generatedCerts" -}}
{{- $secretName := include "sidecar-injector.tlsSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (not .Values.certificates.rotate) -}}
caCert: {{ index $existing.data "ca.crt" }}
tlsCert: {{ index $existing.data "tls.crt" }}
tlsKey: {{ index $existing.data "tls.key" }}
{{- else -}}
{{- $service := include "sidecar-injector.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $days := int .Values.certificates.validityDays -}}
{{- $ca := genCA (printf "%s-ca" $service) $days -}}
{{- $names := list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service $ns) nil $names $days $ca -}}
caCert: {{ $ca.Cert | b64enc }}
tlsCert: {{ $cert.Cert | b64enc }}
tlsKey: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}

{{/*
engine admission-policy or hybrid: fail unless the cluster serves MutatingAdmissionPolicy in
admissionregistration.k8s.io/v1 (Kubernetes 1.36+). `helm template` knows no cluster: pass
--api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy.
*/}}
{{- define "sidecar-injector.engine" -}}
{{- $engine := .Values.engine -}}
{{- if and (ne $engine "webhook") (not (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")) -}}
{{- fail (printf "engine: %s needs Kubernetes 1.36 or newer (MutatingAdmissionPolicy in admissionregistration.k8s.io/v1), and this cluster (Kubernetes %s) does not serve it: keep engine: webhook, or upgrade the cluster. (helm template: pass --api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy)" $engine .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $engine -}}
{{- end -}}

{{/* The admission policies and bindings the server applies with engine admission-policy or
hybrid (webhook.compiled.object_names): kind -> names. */}}
{{- define "sidecar-injector.compiledNames" -}}
{{- $name := include "sidecar-injector.fullname" . -}}
{{- $checks := list (printf "%s-warn" $name) (printf "%s-deny" $name) -}}
{{- $bindings := list -}}
{{- range concat (list $name) $checks }}
{{- $bindings = append $bindings (list (printf "%s-namespace" .) (printf "%s-pod" .)) -}}
{{- end -}}
mutatingadmissionpolicies: {{ list $name | toJson }}
mutatingadmissionpolicybindings: {{ index $bindings 0 | toJson }}
validatingadmissionpolicies: {{ $checks | toJson }}
validatingadmissionpolicybindings: {{ concat (index $bindings 1) (index $bindings 2) | toJson }}
{{- end -}}
