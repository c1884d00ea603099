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
{{- with (include "dscc-token-operator.global" . | fromYaml).commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
.Values.global, or an empty map when the chart is installed alone (Helm then may pass no
global values at all).
*/}}
{{- define "dscc-token-operator.global" -}}
{{- toYaml (default dict .Values.global) }}
{{- end }}

{{/*
The Pod's image pull Secrets: global.imagePullSecrets then imagePullSecrets, without
duplicates.
*/}}
{{- define "dscc-token-operator.imagePullSecrets" -}}
{{- $global := include "dscc-token-operator.global" . | fromYaml }}
{{- $secrets := list }}
{{- range concat (default list $global.imagePullSecrets) .Values.imagePullSecrets }}
{{- if not (has . $secrets) }}
{{- $secrets = append $secrets . }}
{{- end }}
{{- end }}
{{- with $secrets }}
{{- toYaml . }}
{{- end }}
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
Rules of the operator's role in the namespaces it works in. The same rules serve as the
ClusterRole (cluster-wide mode) or as a Role in each watched namespace (namespaced mode).
They are exactly the API calls the operator makes (see the chart README's RBAC table):
- dscccredentials: list and watch (the informer), and get: a credential is read live when the
  watch lags more than 2 s behind the operator's own status write. No update: the spec is never
  written;
- dscccredentials/status: patch (server-side apply of the status);
- no dscccredentials/finalizers: the owner reference of the Secrets it creates does not set
  blockOwnerDeletion, so even the OwnerReferencesPermissionEnforcement admission plugin
  (OpenShift) asks for no right on the owner;
- secrets: a metadata-only list/watch, GETs of the few Secrets it needs, and create, update,
  delete of the target Secrets and the operator-only "<name>-refresh" Secret. create is a POST
  (it fails if the Secret exists), update a PUT at the resourceVersion the operator read, so
  that no one else's Secret is ever taken over; delete: the old target after a rename, and a
  target whose immutable type changed. No patch;
- events.k8s.io events: create and patch (no core "" Events).
The workloads restarted after a new token are in "dscc-token-operator.rolloutRestartRules".
*/}}
{{- define "dscc-token-operator.rules" -}}
- apiGroups: ["dscc.io"]
  resources: ["dscccredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["dscc.io"]
  resources: ["dscccredentials/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Rules for spec.rolloutRestartTargets: a merge patch of the workload's Pod template annotation
dscc.io/restartedAt (a missing workload answers 404 to it). The operator never reads, lists or
updates workloads. Granted only with rolloutRestart.enabled.
*/}}
{{- define "dscc-token-operator.rolloutRestartRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["patch"]
{{- end }}

{{/*
Rules of the leader-election Role in the release namespace. create cannot be restricted by
resourceNames (the name is not known at authorization time); get and patch are restricted to
the one Lease.
*/}}
{{- define "dscc-token-operator.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "dscc-token-operator.leaseName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}

{{/*
The job label matchers of the operator's scrape job in the alert expressions.
*/}}
{{- define "dscc-token-operator.jobSelector" -}}
{{- default (printf "job=%q" (printf "%s-metrics" (include "dscc-token-operator.fullname" .))) .Values.prometheusRule.jobSelector }}
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
{{- if and .Values.watchNamespaces .Values.rolloutRestart.enabled }}
{{- range .Values.rolloutRestart.namespaces }}
{{- if not (has . $.Values.watchNamespaces) }}
{{- fail (printf "rolloutRestart.namespaces: %s is not one of watchNamespaces; the operator restarts workloads only where it watches credentials" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.crds.enabled }}
{{- $crd := .Files.Get "crds/dscc.io_dscccredentials.yaml" | fromYaml }}
{{- if or $crd.metadata.labels $crd.metadata.annotations }}
{{- fail "crds/dscc.io_dscccredentials.yaml has metadata.labels or annotations: templates/crds.yaml must merge them" }}
{{- end }}
{{- end }}
{{- end }}
