{{/*
The chart name, or nameOverride.
*/}}
{{- define "dscc-token-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". Truncated to 63 characters (a DNS
label).
*/}}
{{- define "dscc-token-operator.fullname" -}}
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

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "dscc-token-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "dscc-token-operator.labels" -}}
helm.sh/chart: {{ include "dscc-token-operator.chart" . }}
{{ include "dscc-token-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dscc-token-operator
{{- end }}

{{/*
Labels that select the operator's Pods. They never change on upgrade (a Deployment's selector
is immutable).
*/}}
{{- define "dscc-token-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dscc-token-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "dscc-token-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dscc-token-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest, else repository:tag (default tag: appVersion).
*/}}
{{- define "dscc-token-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The name of the leader-election Lease.
*/}}
{{- define "dscc-token-operator.leaseName" -}}
{{- default (include "dscc-token-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Where the extra CA bundle is mounted, and the file the operator reads.
*/}}
{{- define "dscc-token-operator.extraCADir" -}}
/etc/dscc-token-operator/extra-ca
{{- end }}

{{/*
Rules of the operator's role for the namespaces it works in: DsccCredentials, Secrets (client
Secrets are read, target Secrets written), Events, and the workloads it restarts after a new
token. The same rules serve as ClusterRole (cluster-wide mode) or Role (namespaced mode).
*/}}
{{- define "dscc-token-operator.rules" -}}
- apiGroups: ["dscc.io"]
  resources: ["dscccredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["dscc.io"]
  resources: ["dscccredentials/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["dscc.io"]
  resources: ["dscccredentials/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "patch"]
{{- end }}

{{/*
Checks of combinations the schema cannot express.
*/}}
{{- define "dscc-token-operator.validate" -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) }}
{{- fail "rbac.namespaced=true needs watchNamespaces: the namespaces to create Roles in and to watch" }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would request tokens" }}
{{- end }}
{{- if and (ne (toString .Values.podDisruptionBudget.minAvailable) "") (ne (toString .Values.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "serviceMonitor.enabled=true needs metrics.service.enabled=true: the ServiceMonitor selects that Service" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail "metrics.port and health.port must differ" }}
{{- end }}
{{- end }}
