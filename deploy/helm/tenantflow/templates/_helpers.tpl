{{- define "tenantflow.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tenantflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tenantflow.labels" -}}
app.kubernetes.io/name: {{ include "tenantflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tenantflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tenantflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tenantflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tenantflow.tlsSecret" -}}
{{- .Values.agent.tls.secretName | default (printf "%s-tls" (include "tenantflow.fullname" .)) -}}
{{- end -}}

{{- /* Values an older chart had: refused with what replaced them, never silently ignored. */ -}}
{{- define "tenantflow.checkRemovedValues" -}}
{{- range $old, $new := dict "serviceMonitor" "monitoring.flavor=prometheus-operator (a PodMonitor)" "podMonitor" "monitoring.flavor=prometheus-operator or azure" "prometheusRule" "monitoring.rules (with monitoring.flavor=prometheus-operator)" "prometheusScrapeAnnotations" "monitoring.flavor=annotations" }}
{{- if hasKey $.Values $old }}
{{- fail (printf "%s was replaced by %s (docs/deploy-aks.md#monitoring)" $old $new) }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* The generated TLS Secret's data: the one already in the cluster when there is one
(helm install/upgrade), else a new CA and certificate. Made once per render and kept in
.Values, so the Secret and the DaemonSet's checksum see the same certificate. */ -}}
{{- define "tenantflow.tlsData" -}}
{{- if not (hasKey .Values "tenantflowRenderedTLS") }}
{{- $name := include "tenantflow.fullname" . }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (printf "%s-tls" $name) }}
{{- $data := dict }}
{{- if and $found $found.data (hasKey $found.data "tls.crt") (hasKey $found.data "tls.key") (hasKey $found.data "ca.crt") }}
{{- $data = pick $found.data "tls.crt" "tls.key" "ca.crt" }}
{{- else }}
{{- $ca := genCA (printf "%s-ca" $name) 3650 }}
{{- $index := printf "%s-index" $name }}
{{- $sans := list (printf "%s-agent" $name) "localhost" $index (printf "%s.%s.svc" $index .Release.Namespace) (printf "%s.%s.svc.cluster.local" $index .Release.Namespace) }}
{{- $cert := genSignedCert (printf "%s-agent" $name) (list "127.0.0.1") $sans 3650 $ca }}
{{- $data = dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" ($ca.Cert | b64enc) }}
{{- end }}
{{- $_ := set .Values "tenantflowRenderedTLS" (toYaml $data) }}
{{- end }}
{{- get .Values "tenantflowRenderedTLS" }}
{{- end -}}

{{- /* Changes when the agents' certificate Secret is replaced by a new one, so the
DaemonSet rolls; a Secret kept across an upgrade gives the same value. cert-manager and
user Secrets renew in place: the agents reload those files. */ -}}
{{- define "tenantflow.tlsChecksum" -}}
{{- if or .Values.agent.tls.secretName .Values.agent.tls.certManager.issuerRef -}}
in-place
{{- else -}}
{{- include "tenantflow.tlsData" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{- /* The chart's TLS Secret is needed by the agents' guarded listeners and by the index
(followers' tokens cross the network only over TLS). */ -}}
{{- define "tenantflow.tlsNeeded" -}}
{{- if or .Values.agent.records.exposed .Values.agent.metrics.auth .Values.index.enabled -}}
true
{{- end -}}
{{- end -}}

{{- /* The agents' own listeners use the whole Secret; index followers need only ca.crt. */ -}}
{{- define "tenantflow.agentServesTLS" -}}
{{- if or .Values.agent.records.exposed .Values.agent.metrics.auth -}}
true
{{- end -}}
{{- end -}}
