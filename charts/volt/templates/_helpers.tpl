{{/* Chart name, overridable. */}}
{{- define "volt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects; DNS-1123, at most 63 characters. */}}
{{- define "volt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "volt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "volt.labels" -}}
helm.sh/chart: {{ include "volt.chart" . }}
{{ include "volt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the operator pod; immutable once installed. */}}
{{- define "volt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "volt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "volt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "volt.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "volt.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Arguments of `python -m volt_operator` that follow from the values. */}}
{{- define "volt.operatorArgs" -}}
{{- if .Values.leaderElection.enabled }}
- --leader-elect
- --leader-election-namespace={{ .Release.Namespace }}
- --leader-election-lease={{ include "volt.leaseName" . }}
{{- else }}
- --standalone
{{- end }}
{{- if .Values.watchNamespace }}
- --namespace={{ .Values.watchNamespace }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
- --log-format={{ .Values.operator.logFormat }}
{{- if eq .Values.operator.logLevel "verbose" }}
- --verbose
{{- end }}
{{- if .Values.networkPolicy.enabled }}
- {{ printf "--network-policy-peers=%s" (include "volt.networkPolicyPeers" .) | quote }}
{{- end }}
{{- if .Values.kueue.enabled }}
- --kueue
{{- end }}
{{- with .Values.operator.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The leader-election Lease: one per release, so that releases watching different
     namespaces from one release namespace do not wait on each other. */}}
{{- define "volt.leaseName" -}}
{{ include "volt.fullname" . }}
{{- end -}}

{{/* Who may reach the jobs' metrics ports: the chart's peers and the operator's own pod. */}}
{{- define "volt.networkPolicyPeers" -}}
{{- $operator := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (include "volt.selectorLabels" . | fromYaml)) -}}
{{- append .Values.networkPolicy.metricsFrom $operator | toJson -}}
{{- end -}}

{{/* The `release` label of a PodMonitor or ServiceMonitor (argument: its `labels` value,
     then the root context): kube-prometheus-stack's Prometheus selects monitors by
     `release: <its release name>` by default. A `release` in the monitor's own labels wins. */}}
{{- define "volt.monitorRelease" -}}
{{- $labels := index . 0 | default dict -}}
{{- $root := index . 1 -}}
{{- get $labels "release" | default $root.Values.metrics.prometheusRelease | default $root.Release.Name -}}
{{- end -}}
