{{/*
Names. With the release name "tokensync" (or any containing it) every object is named as
in deploy/: tokensync, tokensync-operator, tokensync-metrics, ...
*/}}
{{- define "tokensync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokensync.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "tokensync.fullname" .) -}}
{{- end -}}

{{- define "tokensync.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "tokensync.fullname" .) -}}
{{- end -}}

{{/* The operator's user name, as the API server sees its ServiceAccount token. */}}
{{- define "tokensync.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "tokensync.serviceAccountName" .) -}}
{{- end -}}

{{/* Selector labels: the same as deploy/ (a kustomize install can be taken over). */}}
{{- define "tokensync.selectorLabels" -}}
app.kubernetes.io/name: tokensync
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tokensync.labels" -}}
{{ include "tokensync.selectorLabels" . }}
{{ include "tokensync.commonLabels" . }}
{{- end -}}

{{/* The labels of an object that belongs to no component of the operator's own. */}}
{{- define "tokensync.commonLabels" -}}
app.kubernetes.io/part-of: tokensync
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokensync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's permissions: the same rules as deploy/base/rbac-operator.yaml (see the
comments there for why each is needed); a ClusterRole in cluster scope, a Role in each
watched namespace in namespaced scope.
*/}}
{{- define "tokensync.operatorRules" -}}
# Watch credentials; never written (kopf stores nothing on them).
- apiGroups: [tokensync.dev]
  resources: [oauth2credentials]
  verbs: [list, watch]
# Status is written with merge patches to the status subresource.
- apiGroups: [tokensync.dev]
  resources: [oauth2credentials/status]
  verbs: [patch]
# blockOwnerDeletion on managed Secrets needs update on the owner's finalizers
# (OwnerReferencesPermissionEnforcement); no finalizer is ever added.
- apiGroups: [tokensync.dev]
  resources: [oauth2credentials/finalizers]
  verbs: [update]
# Labelled source Secrets (watched with a label selector), referenced and managed Secrets
# read by name; managed Secrets created with POST, merge-patched (resourceVersion
# checked, never replaced with PUT) and deleted after a secret.name change.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# CA bundles referenced by tls.caRef; never written.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Events on credentials (POST only).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* Workload identity: ServiceAccount tokens through the TokenRequest API. */}}
{{- define "tokensync.workloadIdentityRules" -}}
# The ServiceAccount's labels and annotations (the opt-ins), read before minting. No
# serviceaccounts/token: each namespace grants that per ServiceAccount (README
# "Workload identity").
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
{{- end -}}

{{/* Where metrics.certSecret is mounted. */}}
{{- define "tokensync.metricsCertDir" -}}
/etc/tokensync/metrics-tls
{{- end -}}

{{/* The Secret with the metrics certificate, when metrics are served over HTTPS. */}}
{{- define "tokensync.metricsCertSecret" -}}
{{- if include "tokensync.secureMetrics" . }}{{ .Values.metrics.certSecret }}{{ end -}}
{{- end -}}

{{/* /metrics over HTTPS for authenticated, authorised scrapers (not --metrics-insecure). */}}
{{- define "tokensync.secureMetrics" -}}
{{- if and .Values.metrics.port (not .Values.metrics.insecure) -}}true{{- end -}}
{{- end -}}

{{- define "tokensync.args" -}}
- run
{{- if eq .Values.scope "namespaced" }}
{{- range .Values.namespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- if gt (int .Values.replicas) 1 }}
- --peering={{ include "tokensync.leaseName" . }}
{{- end }}
- --health-port={{ .Values.health.port }}
- --metrics-port={{ .Values.metrics.port }}
{{- if and .Values.metrics.port .Values.metrics.insecure }}
- --metrics-insecure
{{- else if include "tokensync.metricsCertSecret" . }}
- --metrics-cert-dir={{ include "tokensync.metricsCertDir" . }}
{{- end }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.allowInsecure }}
- --allow-insecure
{{- end }}
{{- range .Values.allowedTokenHosts }}
- {{ printf "--allowed-token-hosts=%s" . | quote }}
{{- end }}
{{- if not .Values.denyPrivateNetworks }}
- --no-deny-private-networks
{{- end }}
{{- if .Values.workloadIdentity.enabled }}
- --enable-workload-identity
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
