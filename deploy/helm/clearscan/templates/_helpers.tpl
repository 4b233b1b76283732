{{/*
Names and labels.
*/}}
{{- define "clearscan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clearscan.fullname" -}}
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

{{- define "clearscan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clearscan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clearscan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "clearscan.labels" -}}
helm.sh/chart: {{ include "clearscan.chart" . }}
{{ include "clearscan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clearscan
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one component. Call with (dict "root" $ "component" "api").
*/}}
{{- define "clearscan.componentLabels" -}}
{{ include "clearscan.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "clearscan.componentSelector" -}}
{{ include "clearscan.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "clearscan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clearscan.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "clearscan.claimName" -}}
{{- default (printf "%s-data" (include "clearscan.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "clearscan.image" -}}
{{- $tag := required "image.tag is required: the ClearScan version to run, e.g. --set image.tag=0.1.0" .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Whether any worker pool runs (then jobs go through the Celery broker).
*/}}
{{- define "clearscan.workersEnabled" -}}
{{- if or .Values.worker.enabled .Values.gpuWorker.enabled }}true{{ end }}
{{- end }}

{{/*
The most pods of one Deployment that can run at once.
*/}}
{{- define "clearscan.maxPods" -}}
{{- if .autoscaling.enabled }}{{ .autoscaling.maxReplicas }}{{ else }}{{ .replicas }}{{ end }}
{{- end }}

{{/*
Refuse values that render valid objects but cannot work. Included once, by the API Deployment.
*/}}
{{- define "clearscan.validate" -}}
{{- $v := .Values }}
{{- $pods := int (include "clearscan.maxPods" $v.api) }}
{{- if $v.worker.enabled }}{{ $pods = add $pods (int (include "clearscan.maxPods" $v.worker)) }}{{ end }}
{{- if $v.gpuWorker.enabled }}{{ $pods = add $pods (int (include "clearscan.maxPods" $v.gpuWorker)) }}{{ end }}
{{- if and $v.persistence.enabled (ne $v.persistence.accessMode "ReadWriteMany") (gt (int $pods) 1) }}
{{- fail (printf "persistence.accessMode %s lets one node (or pod) mount the data volume, but up to %d pods would mount it (API replicas or autoscaling maxReplicas, plus workers): use persistence.accessMode=ReadWriteMany with a storage class that supports it, or run a single pod (api.replicas=1, worker.enabled=false, gpuWorker.enabled=false)" $v.persistence.accessMode (int $pods)) }}
{{- end }}
{{- if and (not $v.persistence.enabled) (not $v.storage.s3.enabled) (gt (int $pods) 1) }}
{{- fail (printf "blobs would live in each pod's own emptyDir, but up to %d pods run: enable storage.s3 or persistence (ReadWriteMany)" (int $pods)) }}
{{- end }}
{{- if and $v.storage.s3.enabled (not $v.storage.s3.bucket) }}
{{- fail "storage.s3.bucket is required when storage.s3.enabled is true" }}
{{- end }}
{{- range $name, $a := dict "api" $v.api.autoscaling "worker" $v.worker.autoscaling "gpuWorker" $v.gpuWorker.autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above maxReplicas (%d)" $name (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $secretSettings := dict "CLEARSCAN_DATABASE_URL" "secrets.databaseUrl" "CLEARSCAN_SECRET_KEY" "secrets.secretKey" "CLEARSCAN_PSEUDONYM_KEY" "secrets.pseudonymKey" "CLEARSCAN_AUDIT_KEY" "secrets.auditKey" "CLEARSCAN_BROKER_URL" "secrets.brokerUrl" "CLEARSCAN_REDIS_URL" "secrets.redisUrl" "CLEARSCAN_ADMIN_PASSWORD" "secrets.adminPassword" "CLEARSCAN_METRICS_TOKEN" "secrets.metricsToken" "CLEARSCAN_S3_ACCESS_KEY_ID" "storage.s3.credentials" "CLEARSCAN_S3_SECRET_ACCESS_KEY" "storage.s3.credentials" }}
{{- $chartSettings := dict "CLEARSCAN_ENVIRONMENT" "always production" "CLEARSCAN_DATA_DIR" "dataDir" "CLEARSCAN_BLOB_URL" "storage.s3" "CLEARSCAN_S3_ENDPOINT_URL" "storage.s3.endpointUrl" "CLEARSCAN_S3_REGION" "storage.s3.region" "CLEARSCAN_DEVICE" "gpuWorker" "CLEARSCAN_JOB_ROUTES" "gpuWorker.jobKinds" }}
{{- range $setting, $_ := $v.config }}
{{- with get $secretSettings $setting }}
{{- fail (printf "config.%s is a secret: keep it in a Secret and name that Secret in %s, never in values" $setting .) }}
{{- end }}
{{- with get $chartSettings $setting }}
{{- fail (printf "config.%s is set by the chart (%s)" $setting .) }}
{{- end }}
{{- end }}
{{- with $v.config.CLEARSCAN_SHUTDOWN_GRACE_SECONDS }}
{{- if ge (float64 .) (float64 $v.api.terminationGracePeriodSeconds) }}
{{- fail (printf "config.CLEARSCAN_SHUTDOWN_GRACE_SECONDS (%v) must stay below api.terminationGracePeriodSeconds (%v), or the API is killed before its requests finish" . $v.api.terminationGracePeriodSeconds) }}
{{- end }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.host) }}
{{- fail "ingress.host is required when ingress.enabled is true" }}
{{- end }}
{{- end }}

{{/*
A secretKeyRef entry. Call with (dict "root" $ "ref" .Values.secrets.databaseUrl "name" "CLEARSCAN_DATABASE_URL" "what" "secrets.databaseUrl").
*/}}
{{- define "clearscan.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "%s.secret or secrets.existingSecret must name a Secret" .what) (default .root.Values.secrets.existingSecret .ref.secret) }}
      key: {{ required (printf "%s.key is required" .what) .ref.key }}
{{- end }}

{{/*
Environment of every ClearScan container. Call with (dict "root" $ "component" "api").
*/}}
{{- define "clearscan.env" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- name: CLEARSCAN_ENVIRONMENT
  value: production
- name: CLEARSCAN_DATA_DIR
  value: {{ $v.dataDir | quote }}
{{- range $name, $value := $v.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.databaseUrl "name" "CLEARSCAN_DATABASE_URL" "what" "secrets.databaseUrl") }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.secretKey "name" "CLEARSCAN_SECRET_KEY" "what" "secrets.secretKey") }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.pseudonymKey "name" "CLEARSCAN_PSEUDONYM_KEY" "what" "secrets.pseudonymKey") }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.auditKey "name" "CLEARSCAN_AUDIT_KEY" "what" "secrets.auditKey") }}
{{- if ne .component "migrations" }}
{{- /* The image's entrypoint creates the first admin before `serve` and before `worker`,
whichever starts first: both need the password (else one is generated into that pod's log). */}}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.adminPassword "name" "CLEARSCAN_ADMIN_PASSWORD" "what" "secrets.adminPassword") }}
{{- if include "clearscan.workersEnabled" $root }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.brokerUrl "name" "CLEARSCAN_BROKER_URL" "what" "secrets.brokerUrl") }}
{{- end }}
{{- if and $v.gpuWorker.enabled $v.gpuWorker.jobKinds }}
{{- $routes := dict }}
{{- range $v.gpuWorker.jobKinds }}{{ $_ := set $routes . (first $v.gpuWorker.queues) }}{{ end }}
- name: CLEARSCAN_JOB_ROUTES
  value: {{ $routes | toJson | quote }}
{{- end }}
{{- if $v.secrets.redisUrl.enabled }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" $v.secrets.redisUrl "name" "CLEARSCAN_REDIS_URL" "what" "secrets.redisUrl") }}
{{- end }}
{{- if $v.storage.s3.enabled }}
{{- $s3 := $v.storage.s3 }}
- name: CLEARSCAN_BLOB_URL
  value: {{ printf "s3://%s/%s" $s3.bucket (trimAll "/" $s3.prefix) | trimSuffix "/" | quote }}
{{- with $s3.endpointUrl }}
- name: CLEARSCAN_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $s3.region }}
- name: CLEARSCAN_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $s3.credentials.existingSecret }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" (dict "secret" . "key" $s3.credentials.accessKeyIdKey) "name" "CLEARSCAN_S3_ACCESS_KEY_ID" "what" "storage.s3.credentials.accessKeyIdKey") }}
{{ include "clearscan.secretEnv" (dict "root" $root "ref" (dict "secret" . "key" $s3.credentials.secretAccessKeyKey) "name" "CLEARSCAN_S3_SECRET_ACCESS_KEY" "what" "storage.s3.credentials.secretAccessKeyKey") }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Security contexts: fixed hardening, user and group from values.
*/}}
{{- define "clearscan.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext.fsGroup }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "clearscan.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Pod-level fields shared by every ClearScan pod.
*/}}
{{- define "clearscan.podCommon" -}}
serviceAccountName: {{ include "clearscan.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
securityContext:
  {{- include "clearscan.podSecurityContext" . | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
Volumes: a writable /tmp and the data dir. Call with (dict "root" $ "data" true); data=false
gives the data dir an emptyDir (the migration Job, which runs before the claim exists).
*/}}
{{- define "clearscan.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
- name: data
{{- if and .data .root.Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "clearscan.claimName" .root }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "clearscan.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataDir }}
{{- end }}

{{/*
topologySpreadConstraints with this component's pods as the default labelSelector. Call with
(dict "root" $ "component" "api" "constraints" .Values.api.topologySpreadConstraints).
*/}}
{{- define "clearscan.topologySpread" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "clearscan.componentSelector" (dict "root" $.root "component" $.component) | fromYaml)) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}
