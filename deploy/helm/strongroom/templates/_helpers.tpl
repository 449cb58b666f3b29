{{/* Names and labels. */}}
{{- define "strongroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strongroom.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "strongroom.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "strongroom.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "strongroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strongroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "strongroom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "strongroom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strongroom
{{- end -}}

{{/* Selector labels of one component: include "strongroom.componentSelector" (list . "web") */}}
{{- define "strongroom.componentSelector" -}}
{{ include "strongroom.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "strongroom.componentLabels" -}}
{{ include "strongroom.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "strongroom.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "strongroom.secretName" -}}
{{- default (printf "%s-env" (include "strongroom.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "strongroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strongroom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strongroom.claimName" -}}
{{- $root := index . 0 -}}{{- $key := index . 1 -}}
{{- $p := index $root.Values.persistence $key -}}
{{- default (printf "%s-%s" (include "strongroom.fullname" $root) ($key | kebabcase)) $p.existingClaim -}}
{{- end -}}

{{/* What every hub pod shares: service account, security context, config. */}}
{{- define "strongroom.podCommon" -}}
serviceAccountName: {{ include "strongroom.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "strongroom.containerCommon" -}}
image: {{ include "strongroom.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "strongroom.fullname" . }}-config
  - secretRef:
      name: {{ include "strongroom.secretName" . }}
{{- end -}}

{{- define "strongroom.podAnnotations" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* One NetworkPolicy egress rule from {to: [peers], ports: [ports]}. */}}
{{- define "strongroom.egressPeer" -}}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- toYaml .ports | nindent 4 }}
{{- end -}}
