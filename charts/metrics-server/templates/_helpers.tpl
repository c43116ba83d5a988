{{/*
Expand the name of the chart.
*/}}
{{- define "metrics-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated at 63 characters (DNS label limit).
If the release name contains the chart name, it is used as the full name.
*/}}
{{- define "metrics-server.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "metrics-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "metrics-server.labels" -}}
helm.sh/chart: {{ include "metrics-server.chart" . }}
{{ include "metrics-server.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "metrics-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metrics-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The name of the service account to use.
*/}}
{{- define "metrics-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metrics-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image.
*/}}
{{- define "metrics-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "v%s" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{/*
The normalized tls.type, one of metrics-server, helm, cert-manager, existing-secret.
Upstream's spellings (certManager, existingSecret) are accepted too.
*/}}
{{- define "metrics-server.tlsType" -}}
{{- $type := .Values.tls.type | default "metrics-server" }}
{{- $aliases := dict "metrics-server" "metrics-server" "helm" "helm" "cert-manager" "cert-manager" "certManager" "cert-manager" "existing-secret" "existing-secret" "existingSecret" "existing-secret" }}
{{- if not (hasKey $aliases $type) }}
{{- fail (printf "tls.type must be one of metrics-server, helm, cert-manager, existing-secret (got %q)" $type) }}
{{- end }}
{{- get $aliases $type }}
{{- end }}

{{/*
The Secret holding the serving certificate (tls.type helm, cert-manager, existing-secret).
*/}}
{{- define "metrics-server.tlsSecretName" -}}
{{- $type := include "metrics-server.tlsType" . }}
{{- if eq $type "existing-secret" }}
{{- required "tls.existingSecret.name is required when tls.type is existing-secret" .Values.tls.existingSecret.name }}
{{- else }}
{{- printf "%s-tls" (include "metrics-server.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The DNS names the serving certificate must cover: how the kube-apiserver reaches the Service.
*/}}
{{- define "metrics-server.dnsNames" -}}
{{- $fullname := include "metrics-server.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.%s" $fullname $ns .Values.tls.clusterDomain) | toJson }}
{{- end }}

{{/*
tls.type=helm: a CA and a serving certificate, as JSON {"ca","crt","key"} (base64-encoded PEM).
Generated once per render (memoized, so the Secret and the APIService agree) and, with
tls.helm.lookup, reused from the Secret already in the cluster so upgrades do not rotate it.
*/}}
{{- define "metrics-server.helmTLS" -}}
{{- if not (hasKey .Values.tls.helm "generated") }}
{{- $certs := dict }}
{{- if .Values.tls.helm.lookup }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "metrics-server.tlsSecretName" .) }}
{{- if and $secret $secret.data }}
{{- if and (index $secret.data "ca.crt") (index $secret.data "tls.crt") (index $secret.data "tls.key") }}
{{- $certs = dict "ca" (index $secret.data "ca.crt") "crt" (index $secret.data "tls.crt") "key" (index $secret.data "tls.key") }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $certs }}
{{- $days := int .Values.tls.helm.certDurationDays }}
{{- $fullname := include "metrics-server.fullname" . }}
{{- $ca := genCA (printf "%s-ca" $fullname) $days }}
{{- $cn := printf "%s.%s.svc" $fullname .Release.Namespace }}
{{- $cert := genSignedCert $cn nil (include "metrics-server.dnsNames" . | fromJsonArray) $days $ca }}
{{- $certs = dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values.tls.helm "generated" $certs }}
{{- end }}
{{- .Values.tls.helm.generated | toJson }}
{{- end }}

{{/*
The APIService's caBundle (base64), or nothing when the kube-apiserver cannot verify.
*/}}
{{- define "metrics-server.caBundle" -}}
{{- $type := include "metrics-server.tlsType" . }}
{{- if eq $type "helm" }}
{{- (include "metrics-server.helmTLS" . | fromJson).ca }}
{{- else if eq $type "cert-manager" }}
{{- /* Filled in by cert-manager's CA injector. */}}
{{- else if .Values.apiService.caBundle }}
{{- .Values.apiService.caBundle | b64enc }}
{{- else if and (eq $type "existing-secret") .Values.tls.existingSecret.lookup }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "metrics-server.tlsSecretName" .) }}
{{- if and $secret $secret.data (index $secret.data "ca.crt") }}
{{- index $secret.data "ca.crt" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks on combinations of values that would render a broken release.
*/}}
{{- define "metrics-server.validate" -}}
{{- $tlsType := include "metrics-server.tlsType" . }}
{{- if and .Values.apiService.create (eq $tlsType "metrics-server") (not .Values.apiService.insecureSkipTLSVerify) (not .Values.apiService.caBundle) }}
{{- fail "apiService.insecureSkipTLSVerify=false with tls.type=metrics-server needs apiService.caBundle: the certificate the server generates at start is signed by no CA the kube-apiserver knows, so every discovery check would fail. Use tls.type=helm or cert-manager, or mount your own certificate (extraVolumes, args --tls-cert-file/--tls-private-key-file) and set apiService.caBundle to its CA" }}
{{- end }}
{{- if and .Values.hostNetwork.enabled (eq (int .Values.containerPort) 10250) }}
{{- fail "hostNetwork.enabled: the kubelet already listens on the node's port 10250; set containerPort to a free port (e.g. 4443)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable" }}
{{- end }}
{{- end }}
