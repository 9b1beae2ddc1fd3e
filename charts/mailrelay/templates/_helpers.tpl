{{/*
The chart name, or nameOverride.
*/}}
{{- define "mailrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The object-name prefix: fullnameOverride, or the release name with the chart
name appended unless it already contains it. Truncated so that suffixes
such as "-operator-metrics" keep names within 63 characters.
*/}}
{{- define "mailrelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mailrelay.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the operator's Deployment, and of the objects that belong to it
alone (ClusterRole, Role, bindings, PDB, NetworkPolicy, Lease).
*/}}
{{- define "mailrelay.operator.fullname" -}}
{{- printf "%s-operator" (include "mailrelay.fullname" .) }}
{{- end }}

{{- define "mailrelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator pods. The name is "<chart>-operator", not
"<chart>": the Services the operator makes for a Relay select pods by
app.kubernetes.io/name=mailrelay and app.kubernetes.io/instance=<Relay>,
and must never pick up an operator pod whose release is named like a Relay.
*/}}
{{- define "mailrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailrelay.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every object the chart renders.
*/}}
{{- define "mailrelay.labels" -}}
helm.sh/chart: {{ include "mailrelay.chart" . }}
{{ include "mailrelay.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "mailrelay.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mailrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailrelay.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailrelay.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "mailrelay.relayImage" -}}
{{- printf "%s:%s" .Values.relayImage.repository (.Values.relayImage.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Whether the operator runs with leader election: on request, and always
with more than one replica.
*/}}
{{- define "mailrelay.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
RBAC rules from a file under files/, parsed so that a file that is not a
YAML list fails the render instead of producing a broken role. The rules
live in those files only; templates never repeat them.
*/}}
{{- define "mailrelay.rulesFromFile" -}}
{{- $rules := .root.Files.Get .file | fromYamlArray }}
{{- if not $rules }}
{{- fail (printf "%s: missing or empty" .file) }}
{{- end }}
{{- range $rules }}
{{- if not (kindIs "map" .) }}
{{- fail (printf "%s: not a YAML list of rules: %v" $.file .) }}
{{- end }}
{{- end }}
{{- toYaml $rules }}
{{- end }}
