{{/*
Names. With the release name "tokensync" (or any containing it) every object is named as
in deploy/: tokensync, tokensync-operator, tokensync-metrics, ...
*/}}
{{- define "tokensync.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokensync.fullname" -}}
{{- $name := include "tokensync.name" . -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The namespace of the operator and its namespaced objects. */}}
{{- define "tokensync.namespace" -}}
{{- .Values.namespaceOverride | default .Release.Namespace -}}
{{- end -}}

{{/* The operator's ServiceAccount: the chart's own (serviceAccount.create), or the one
you bring (serviceAccount.name, else "default"). */}}
{{- define "tokensync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tokensync.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount as an RBAC subject. */}}
{{- define "tokensync.subject" -}}
kind: ServiceAccount
name: {{ include "tokensync.serviceAccountName" . }}
namespace: {{ include "tokensync.namespace" . }}
{{- end -}}

{{- define "tokensync.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "tokensync.fullname" .) -}}
{{- end -}}

{{/* The operator's user name, as the API server sees its ServiceAccount token. */}}
{{- define "tokensync.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" (include "tokensync.namespace" .) (include "tokensync.serviceAccountName" .) -}}
{{- end -}}

{{/* Selector labels: deploy/'s, plus the release, so that two releases in one namespace
select only their own pods. */}}
{{- define "tokensync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokensync.name" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokensync.labels" -}}
{{ include "tokensync.selectorLabels" . }}
{{ include "tokensync.releaseLabels" . }}
{{- end -}}

{{/* The labels of an object that belongs to no component of the operator's own, and
the user's commonLabels on every object. */}}
{{- define "tokensync.commonLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "tokensync.releaseLabels" . }}
{{- end -}}

{{- define "tokensync.releaseLabels" -}}
app.kubernetes.io/part-of: tokensync
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
{{- if gt (int .Values.sharding.shards) 0 }}
- --shards={{ .Values.sharding.shards }}
{{- end }}
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
{{- if .Values.rolloutRestart.enabled }}
- --enable-rollout-restart
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
