{{- define "wikigate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wikigate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wikigate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wikigate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wikigate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "wikigate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wikigate.secretName" -}}
{{- default (include "wikigate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* resources.limits.memory in bytes (Ki, Mi, Gi suffixes or plain bytes). */}}
{{- define "wikigate.memoryBytes" -}}
{{- $memory := toString .Values.resources.limits.memory -}}
{{- if hasSuffix "Gi" $memory -}}{{ mul (trimSuffix "Gi" $memory | int64) 1073741824 }}
{{- else if hasSuffix "Mi" $memory -}}{{ mul (trimSuffix "Mi" $memory | int64) 1048576 }}
{{- else if hasSuffix "Ki" $memory -}}{{ mul (trimSuffix "Ki" $memory | int64) 1024 }}
{{- else -}}{{ $memory | int64 }}
{{- end -}}
{{- end -}}

{{/* cache.max_bytes: a share of the memory limit. */}}
{{- define "wikigate.cacheMaxBytes" -}}
{{- div (mul (include "wikigate.memoryBytes" . | int64) (int .Values.cache.memoryPercent)) 100 -}}
{{- end -}}

{{/* Releases that would render and then crashloop fail here instead, naming the value. */}}
{{- define "wikigate.validate" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if and (eq .Values.authMode "service-account") (not .Values.secrets.upstreamCredential) -}}
{{- fail "secrets.upstreamCredential is required with authMode=service-account: the Authorization value sent upstream (\"Basic \" + base64 of email:api-token), or secrets.existingSecret with a key upstream-credential" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.secrets.cacheKeySecret) -}}
{{- fail "secrets.cacheKeySecret is required with redis.enabled: replicas sharing a cache need the same key secret (at least 16 characters), or secrets.existingSecret with a key cache-key-secret" -}}
{{- end -}}
{{- end -}}
{{- end -}}
