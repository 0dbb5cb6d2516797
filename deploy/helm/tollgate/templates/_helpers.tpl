{{/* Names: <release>-tollgate, or the release name if it already holds "tollgate". */}}
{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tollgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
The listen addresses the config names (via tpl): gRPC on every interface for
a shared service, on loopback for a sidecar; admin always on every interface,
because the kubelet probes the pod IP.
*/}}
{{- define "tollgate.grpcAddress" -}}
{{- if eq .Values.mode "sidecar" -}}
127.0.0.1:{{ .Values.ports.grpc }}
{{- else -}}
0.0.0.0:{{ .Values.ports.grpc }}
{{- end -}}
{{- end -}}

{{- define "tollgate.adminAddress" -}}
0.0.0.0:{{ .Values.ports.admin }}
{{- end -}}

{{/*
tollgate.configText is tollgate.yaml as rendered, after checking that the
listeners it names are the ones the pod and the Service expose.
*/}}
{{- define "tollgate.configText" -}}
{{- $text := tpl .Values.config . -}}
{{- $cfg := fromYaml $text -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "config: not YAML: %s" $cfg.Error) -}}
{{- end -}}
{{- $server := $cfg.server | default dict -}}
{{- $grpc := $server.grpc_address | default "127.0.0.1:9191" | toString -}}
{{- $admin := $server.admin_address | default "127.0.0.1:9090" | toString -}}
{{- if not (hasSuffix (printf ":%v" .Values.ports.grpc) $grpc) -}}
{{- fail (printf "config: server.grpc_address %s does not listen on ports.grpc (%v)" $grpc .Values.ports.grpc) -}}
{{- end -}}
{{- if and (eq .Values.mode "service") (or (hasPrefix "127." $grpc) (hasPrefix "localhost:" $grpc) (hasPrefix "[::1]:" $grpc) (hasPrefix "unix:" $grpc)) -}}
{{- fail (printf "config: server.grpc_address %s is loopback only, but mode service is asked by other pods" $grpc) -}}
{{- end -}}
{{- if not (hasSuffix (printf ":%v" .Values.ports.admin) $admin) -}}
{{- fail (printf "config: server.admin_address %s does not listen on ports.admin (%v)" $admin .Values.ports.admin) -}}
{{- end -}}
{{- if or (hasPrefix "127." $admin) (hasPrefix "localhost:" $admin) (hasPrefix "[::1]:" $admin) -}}
{{- fail (printf "config: server.admin_address %s is loopback only; the kubelet probes the pod IP" $admin) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/*
A checksum of the parts of tollgate.yaml that need a restart: everything but
the sections tollgate reloads live. Changing only those reloads in place.
*/}}
{{- define "tollgate.restartChecksum" -}}
{{- $cfg := fromYaml (include "tollgate.configText" .) -}}
{{- omit $cfg "plans" "routes" "identity" "headers" "responses" "shadow" "log" | toJson | sha256sum -}}
{{- end -}}

{{/*
tollgate.container is the tollgate container. The Deployment uses it; in
sidecar mode your API's chart includes it with this chart's context:
  {{- include "tollgate.container" .Subcharts.tollgate | nindent 10 }}
*/}}
{{- define "tollgate.container" -}}
- name: tollgate
  image: {{ include "tollgate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "--config", "/etc/tollgate/tollgate.yaml"]
  env:
    - name: GOGC
      value: {{ .Values.goGC | quote }}
    - name: GOMEMLIMIT
      value: {{ .Values.goMemLimit | quote }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if eq .Values.mode "service" }}
    - name: grpc
      containerPort: {{ .Values.ports.grpc }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    # 503 while starting and while draining, so the pod leaves the Service's
    # endpoints before tollgate stops answering Checks.
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    failureThreshold: 2
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    - name: tollgate-config
      mountPath: /etc/tollgate
      readOnly: true
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* tollgate.volume is the ConfigMap volume tollgate.container mounts. */}}
{{- define "tollgate.volume" -}}
- name: tollgate-config
  configMap:
    name: {{ include "tollgate.fullname" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
