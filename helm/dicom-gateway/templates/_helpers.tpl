{{/*
Names, labels and the per-role facts every template shares. Helpers that take
a role are called with (dict "root" $ "component" "<role>"); a role is one of
single, receiver, store, register, notify, forward, hl7, patient, audit, api. The
worker roles (store, register, notify, forward) are deployed only when
<role>.enabled, hl7 and patient only with hl7.enabled, audit only with
gateway.audit.enabled: a role arrives with the gateway release whose image can
run it.
*/}}

{{- define "dicom-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dicom-gateway.fullname" -}}
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

{{- define "dicom-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Worker roles switched on with <role>.enabled, space separated (may be empty). */}}
{{- define "dicom-gateway.workerRoles" -}}
{{- $enabled := list }}
{{- range $role := list "store" "register" "notify" "forward" }}
{{- if (index $.Values $role).enabled }}{{ $enabled = append $enabled $role }}{{ end }}
{{- end }}
{{- join " " $enabled }}
{{- end }}

{{/* Roles deployed in the configured mode, space separated: single, or the receiver, the enabled worker roles,
hl7 and patient (hl7.enabled), audit (gateway.audit.enabled) and the api. */}}
{{- define "dicom-gateway.components" -}}
{{- if eq .Values.mode "single" }}single{{ else }}{{ list "receiver" (include "dicom-gateway.workerRoles" .) (ternary "hl7 patient" "" .Values.hl7.enabled) (ternary "audit" "" .Values.gateway.audit.enabled) (ternary "api" "" .Values.api.enabled) | compact | join " " }}{{ end }}
{{- end }}

{{/* Object name of a role: the full name in single mode, <fullname>-<role> in split mode. */}}
{{- define "dicom-gateway.componentName" -}}
{{- $fullname := include "dicom-gateway.fullname" .root }}
{{- if eq .component "single" }}
{{- $fullname }}
{{- else }}
{{- printf "%s-%s" ($fullname | trunc 52 | trimSuffix "-") .component }}
{{- end }}
{{- end }}

{{- define "dicom-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicom-gateway.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "dicom-gateway.labels" -}}
helm.sh/chart: {{ include "dicom-gateway.chart" .root }}
{{ include "dicom-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: dicom-gateway
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dicom-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dicom-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dicom-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when the gateway runs without Kafka (its embedded bus). */}}
{{- define "dicom-gateway.embedded" -}}
{{- if and (eq .Values.mode "single") (not .Values.kafka.bootstrapServers) }}true{{ end }}
{{- end }}

{{/* "true" when the role accepts DICOM associations. */}}
{{- define "dicom-gateway.receivesDicom" -}}
{{- if has .component (list "single" "receiver") }}true{{ end }}
{{- end }}

{{/*
"true" when the pods that receive DICOM listen on the plain DICOM port
(gateway.dicom.port): always without DICOM TLS; with it only when
gateway.dicom.tls.tlsOnly is false (GATEWAY_DICOM__TLS_ONLY).
*/}}
{{- define "dicom-gateway.plainDicomPort" -}}
{{- if or (not .Values.gateway.dicom.tls.enabled) (not .Values.gateway.dicom.tls.tlsOnly) }}true{{ end }}
{{- end }}

{{/* Kafka consumer groups a role's pods belong to (single: those of the enabled worker roles and, with
hl7.enabled, of the patient role and, with gateway.audit.enabled, of the audit role). */}}
{{- define "dicom-gateway.consumerGroups" -}}
{{- if eq .component "single" }}
{{- $groups := list }}
{{- range include "dicom-gateway.workerRoles" .root | splitList " " | compact }}{{ $groups = append $groups (printf "dicomgw-%s" .) }}{{ end }}
{{- if include "dicom-gateway.hl7" .root }}{{ $groups = append $groups (include "dicom-gateway.patientGroups" .root) }}{{ end }}
{{- if include "dicom-gateway.audit" .root }}{{ $groups = append $groups (include "dicom-gateway.auditGroups" .root) }}{{ end }}
{{- join " " $groups }}
{{- else if has .component (list "store" "register" "notify" "forward") }}dicomgw-{{ .component }}
{{- else if eq .component "patient" }}{{ include "dicom-gateway.patientGroups" .root }}
{{- else if eq .component "audit" }}{{ include "dicom-gateway.auditGroups" .root }}
{{- end }}
{{- end }}

{{/* The consumer groups of the patient role: dicomgw-patient applies ADT, dicomgw-hl7-forward passes it on
upstream (gateway.hl7.forwardTo.host). */}}
{{- define "dicom-gateway.patientGroups" -}}
dicomgw-patient{{ if include "dicom-gateway.hl7Forwarding" . }} dicomgw-hl7-forward{{ end }}
{{- end }}

{{/* The consumer groups of the audit role: dicomgw-audit-log keeps the index's audit log (always), dicomgw-audit
delivers to the audit record repository (gateway.audit.repositoryUrl). */}}
{{- define "dicom-gateway.auditGroups" -}}
dicomgw-audit-log{{ if .Values.gateway.audit.repositoryUrl }} dicomgw-audit{{ end }}
{{- end }}

{{/* The topic a consumer group reads (keda.topics): store the instances, patient and hl7-forward the ADT
messages, audit-log and audit the audit records, the others the events. */}}
{{- define "dicom-gateway.groupTopic" -}}
{{- $topics := .root.Values.keda.topics }}
{{- if eq .group "dicomgw-store" }}{{ $topics.instances }}
{{- else if has .group (list "dicomgw-patient" "dicomgw-hl7-forward") }}{{ $topics.hl7 }}
{{- else if has .group (list "dicomgw-audit-log" "dicomgw-audit") }}{{ $topics.audit }}
{{- else }}{{ $topics.events }}
{{- end }}
{{- end }}

{{/* "true" when a KEDA ScaledObject scales the role. */}}
{{- define "dicom-gateway.kedaEnabled" -}}
{{- if dig "keda" "enabled" false (index .root.Values .component) }}true{{ end }}
{{- end }}

{{/* "true" when the chart's CPU HorizontalPodAutoscaler scales the role. */}}
{{- define "dicom-gateway.hpaEnabled" -}}
{{- if and (index .root.Values .component).autoscaling.enabled (not (include "dicom-gateway.kedaEnabled" .)) }}true{{ end }}
{{- end }}

{{- define "dicom-gateway.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway }}
{{- add $g.preStopSleepSeconds $g.drainTimeoutSeconds $g.terminationGraceMarginSeconds }}
{{- end }}

{{- define "dicom-gateway.secretsDir" -}}
/run/secrets/dicom-gateway
{{- end }}

{{- define "dicom-gateway.tlsDir" -}}
/etc/dicom-gateway/tls
{{- end }}

{{- define "dicom-gateway.kafkaTlsDir" -}}
/etc/dicom-gateway/kafka-tls
{{- end }}

{{- define "dicom-gateway.httpTlsDir" -}}
/etc/dicom-gateway/http-tls
{{- end }}

{{/* The API tokens Secret, mounted as a directory (never with subPath) so that Kubernetes replaces the file
in place when the Secret changes and the gateway reads it again: tokens rotate without a restart. */}}
{{- define "dicom-gateway.apiTokensDir" -}}
/etc/dicom-gateway/api-tokens
{{- end }}

{{- define "dicom-gateway.oidcCaDir" -}}
/etc/dicom-gateway/oidc-ca
{{- end }}

{{/* "true" when the HTTP port of every pod serves HTTPS (gateway.http.tls.existingSecret). */}}
{{- define "dicom-gateway.https" -}}
{{- if .Values.gateway.http.tls.existingSecret }}true{{ end }}
{{- end }}

{{/*
"true" when the probes cannot be httpGet: HTTPS that requires client certificates. The kubelet presents no
client certificate (and no probe type can), so an httpGet probe would fail its TLS handshake and the pods
would never become ready. The probes then are tcpSocket probes on the same port: they check that the gateway
accepts connections, not what /healthz and /readyz say (a TCP connect and close logs nothing on the gateway).
*/}}
{{- define "dicom-gateway.tcpProbes" -}}
{{- if and (include "dicom-gateway.https" .) .Values.gateway.http.tls.requireClientCert }}true{{ end }}
{{- end }}

{{- define "dicom-gateway.probeScheme" -}}
{{- ternary "HTTPS" "HTTP" (eq (include "dicom-gateway.https" .) "true") }}
{{- end }}

{{/*
"true" when the pods that receive DICOM open the internal port to other pods: with
gateway.notify.reportOnSameAssociation a notify process hands each commitment report to the receiver process
holding the requester's association, on that process's internal port (GATEWAY_INTERNAL__*), with the shared
internal secret. In embedded mode every role runs in the one process of the one pod: the gateway's defaults
(127.0.0.1, a secret generated in the data dir) are right and the port stays closed to the network.
*/}}
{{- define "dicom-gateway.internalPort" -}}
{{- if and .Values.gateway.notify.reportOnSameAssociation (not (include "dicom-gateway.embedded" .)) }}true{{ end }}
{{- end }}

{{/*
"true" when the release forwards to other archives (forward.enabled): the gateway.forward settings go into the
shared config, the forward role runs (its own Deployment in split mode; in single mode the single pods run it,
as the gateway runs the forward role whenever destinations are configured).
*/}}
{{- define "dicom-gateway.forwarding" -}}
{{- if .Values.forward.enabled }}true{{ end }}
{{- end }}

{{/* The role whose pods forward: forward in split mode, the single pods in single mode. */}}
{{- define "dicom-gateway.forwardComponent" -}}
{{- ternary "single" "forward" (eq .Values.mode "single") }}
{{- end }}

{{/* The destinations' ports, each once in the order of the destinations, as a JSON list: what the forwarding
pods connect to. */}}
{{- define "dicom-gateway.forwardPorts" -}}
{{- $ports := list }}
{{- range .Values.gateway.forward.destinations }}{{ $ports = append $ports (int .port) }}{{ end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/*
"true" when the release takes HL7 v2 ADT (hl7.enabled): the gateway.hl7 settings go into the shared config and
the hl7 (MLLP listener) and patient roles run: their own Deployments in split mode; in single mode the single
pods run them, as the gateway runs both whenever GATEWAY_HL7__PORT is set.
*/}}
{{- define "dicom-gateway.hl7" -}}
{{- if .Values.hl7.enabled }}true{{ end }}
{{- end }}

{{/* The role whose pods listen for HL7 (MLLP): hl7 in split mode, the single pods in single mode. */}}
{{- define "dicom-gateway.hl7Component" -}}
{{- ternary "single" "hl7" (eq .Values.mode "single") }}
{{- end }}

{{/* The role whose pods apply ADT and pass it on upstream: patient in split mode, the single pods in single
mode. */}}
{{- define "dicom-gateway.patientComponent" -}}
{{- ternary "single" "patient" (eq .Values.mode "single") }}
{{- end }}

{{/* "true" when the patient role passes every accepted ADT message on to gateway.hl7.forwardTo (MLLP, out). */}}
{{- define "dicom-gateway.hl7Forwarding" -}}
{{- if and .Values.hl7.enabled .Values.gateway.hl7.forwardTo.host }}true{{ end }}
{{- end }}

{{- define "dicom-gateway.hl7TlsDir" -}}
/etc/dicom-gateway/hl7-tls
{{- end }}

{{- define "dicom-gateway.hl7ForwardTlsDir" -}}
/etc/dicom-gateway/hl7-forward-tls
{{- end }}

{{/*
"true" when the release keeps an audit trail (gateway.audit.enabled, GATEWAY_AUDIT__ENABLED): every process
writes its records to the audit topic, and the audit role consumes them: its own Deployment in split mode; in
single mode the single pods run it, as the gateway runs the audit role unless auditing is off.
*/}}
{{- define "dicom-gateway.audit" -}}
{{- if .Values.gateway.audit.enabled }}true{{ end }}
{{- end }}

{{/* The role whose pods run the audit role (the audit log, delivery to the repository): audit in split mode, the
single pods in single mode. */}}
{{- define "dicom-gateway.auditComponent" -}}
{{- ternary "single" "audit" (eq .Values.mode "single") }}
{{- end }}

{{/* "true" when the audit role delivers to an audit record repository (gateway.audit.repositoryUrl). */}}
{{- define "dicom-gateway.auditDelivery" -}}
{{- if and .Values.gateway.audit.enabled .Values.gateway.audit.repositoryUrl }}true{{ end }}
{{- end }}

{{/* "true" when the delivering pods mount TLS files for the repository: a tls:// URL and a CA bundle or a client
certificate Secret (gateway.audit.tls). */}}
{{- define "dicom-gateway.auditTls" -}}
{{- $a := .Values.gateway.audit }}
{{- if and (include "dicom-gateway.auditDelivery" .) (hasPrefix "tls://" $a.repositoryUrl) (or $a.tls.caSecret $a.tls.clientSecret) }}true{{ end }}
{{- end }}

{{/* The repository's port, from gateway.audit.repositoryUrl (scheme://host:port). */}}
{{- define "dicom-gateway.auditRepositoryPort" -}}
{{- regexFind "[0-9]+$" .Values.gateway.audit.repositoryUrl }}
{{- end }}

{{/* The repository's transport: UDP for udp:// (RFC 5426), TCP for tls:// (RFC 5425). */}}
{{- define "dicom-gateway.auditRepositoryProtocol" -}}
{{- ternary "UDP" "TCP" (hasPrefix "udp://" .Values.gateway.audit.repositoryUrl) }}
{{- end }}

{{- define "dicom-gateway.auditTlsDir" -}}
/etc/dicom-gateway/audit-tls
{{- end }}

{{/* The role whose pods call the internal port: notify in split mode, the single pods in single mode. */}}
{{- define "dicom-gateway.notifyComponent" -}}
{{- ternary "single" "notify" (eq .Values.mode "single") }}
{{- end }}

{{/* The Secret with the internal secret: gateway.internal.existingSecret, or the one the chart generates. */}}
{{- define "dicom-gateway.internalSecretName" -}}
{{- if .Values.gateway.internal.existingSecret }}
{{- .Values.gateway.internal.existingSecret }}
{{- else }}
{{- printf "%s-internal" (include "dicom-gateway.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* Key of the internal secret in that Secret. */}}
{{- define "dicom-gateway.internalSecretKey" -}}
{{- if .Values.gateway.internal.existingSecret }}{{ .Values.gateway.internal.existingSecretKey }}{{ else }}secret{{ end }}
{{- end }}

{{/*
Secret-backed settings as a list of {env, secret, key, dicom, components}: the
env var (and file name under GATEWAY_SECRETS_DIR) each Secret key supplies;
dicom: true for those only the pods that receive DICOM get; components: when
set, the only roles whose pods get it.
*/}}
{{- define "dicom-gateway.secretSettings" -}}
{{- $items := list }}
{{- with .Values.s3 }}
{{- if .existingSecret }}
{{- $items = append $items (dict "env" "GATEWAY_S3__ACCESS_KEY" "secret" .existingSecret "key" .accessKeyKey) }}
{{- $items = append $items (dict "env" "GATEWAY_S3__SECRET_KEY" "secret" .existingSecret "key" .secretKeyKey) }}
{{- end }}
{{- end }}
{{- with .Values.database }}
{{- if .existingSecret }}
{{- $items = append $items (dict "env" "GATEWAY_DATABASE__URL" "secret" .existingSecret "key" .urlKey) }}
{{- end }}
{{- end }}
{{- with .Values.kafka.sasl }}
{{- if .existingSecret }}
{{- $items = append $items (dict "env" "GATEWAY_KAFKA__SASL_USERNAME" "secret" .existingSecret "key" .usernameKey) }}
{{- $items = append $items (dict "env" "GATEWAY_KAFKA__SASL_PASSWORD" "secret" .existingSecret "key" .passwordKey) }}
{{- end }}
{{- end }}
{{- with .Values.gateway.dicom.userIdentity }}
{{- if .existingSecret }}
{{- if .usersKey }}
{{- $items = append $items (dict "env" "GATEWAY_DICOM__USER_IDENTITY__USERS" "secret" .existingSecret "key" .usersKey "dicom" true) }}
{{- end }}
{{- if .tokenKeysKey }}
{{- $items = append $items (dict "env" "GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS" "secret" .existingSecret "key" .tokenKeysKey "dicom" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- if include "dicom-gateway.internalPort" . }}
{{- /* The receiving side of the internal port and its callers (notify) share it; no other role needs it. */}}
{{- $items = append $items (dict "env" "GATEWAY_INTERNAL__SECRET" "secret" (include "dicom-gateway.internalSecretName" .) "key" (include "dicom-gateway.internalSecretKey" .) "components" (list "single" "receiver" "notify")) }}
{{- end }}
{{- toJson $items }}
{{- end }}

{{/* "true" when a role's pods get a secret setting (an item of dicom-gateway.secretSettings). */}}
{{- define "dicom-gateway.getsSecretSetting" -}}
{{- if and (or (not .item.dicom) (include "dicom-gateway.receivesDicom" .)) (or (not .item.components) (has .component .item.components)) }}true{{ end }}
{{- end }}

{{/* Refuse value combinations that cannot work. */}}
{{- define "dicom-gateway.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.mode "split") (not $v.kafka.bootstrapServers) }}
{{- fail "mode=split needs kafka.bootstrapServers: the roles talk through Kafka" }}
{{- end }}
{{- if include "dicom-gateway.embedded" . }}
{{- if gt (int $v.single.replicas) 1 }}
{{- fail "the embedded bus (single mode without kafka.bootstrapServers) must not scale beyond 1 replica: set single.replicas=1 or configure kafka.bootstrapServers" }}
{{- end }}
{{- if $v.single.autoscaling.enabled }}
{{- fail "the embedded bus (single mode without kafka.bootstrapServers) must not scale beyond 1 replica: disable single.autoscaling or configure kafka.bootstrapServers" }}
{{- end }}
{{- if $v.single.keda.enabled }}
{{- fail "single.keda needs kafka.bootstrapServers (the embedded bus has no consumer lag to scale on and must stay at 1 replica)" }}
{{- end }}
{{- end }}
{{- if not (include "dicom-gateway.embedded" .) }}
{{- if not $v.s3.endpoint }}
{{- fail "with Kafka the pods share no disk: set s3.endpoint (and s3.existingSecret) for the object store" }}
{{- end }}
{{- if not $v.database.existingSecret }}
{{- fail "with Kafka the pods share no disk: set database.existingSecret (a PostgreSQL URL); the SQLite fallback is per pod" }}
{{- end }}
{{- end }}
{{- if gt (int $v.kafka.minInsyncReplicas) (int $v.kafka.replicationFactor) }}
{{- fail "kafka.minInsyncReplicas cannot exceed kafka.replicationFactor" }}
{{- end }}
{{- with $v.gateway.dicom.tls }}
{{- if and .enabled (not .existingSecret) }}
{{- fail "gateway.dicom.tls.enabled needs gateway.dicom.tls.existingSecret" }}
{{- end }}
{{- if and .enabled .requireClientCert (not .caKey) }}
{{- fail "gateway.dicom.tls.requireClientCert needs gateway.dicom.tls.caKey (the CAs client certificates must chain to)" }}
{{- end }}
{{- end }}
{{- with $v.gateway.dicom.userIdentity }}
{{- if and .existingSecret (not (or .usersKey .tokenKeysKey)) }}
{{- fail "gateway.dicom.userIdentity.existingSecret needs usersKey or tokenKeysKey (the keys it holds)" }}
{{- end }}
{{- end }}
{{- if and (hasPrefix "SASL_" $v.kafka.securityProtocol) (not $v.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.existingSecret" $v.kafka.securityProtocol) }}
{{- end }}
{{- if and (eq $v.mode "single") $v.single.keda.enabled (not (include "dicom-gateway.consumerGroups" (dict "root" . "component" "single"))) }}
{{- fail "single.keda scales on the consumer groups of the enabled worker roles: enable at least one of store, register, notify, forward (or hl7, or gateway.audit)" }}
{{- end }}
{{- if and (ne $v.kafka.securityProtocol "PLAINTEXT") (not $v.keda.authenticationRef) }}
{{- range $component := include "dicom-gateway.components" . | splitList " " }}
{{- if include "dicom-gateway.kedaEnabled" (dict "root" $ "component" $component) }}
{{- fail (printf "%s.keda with kafka.securityProtocol=%s needs keda.authenticationRef (a KEDA TriggerAuthentication with the Kafka credentials)" $component $v.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.gateway.http.tls }}
{{- if and .requireClientCert (not .existingSecret) }}
{{- fail "gateway.http.tls.requireClientCert needs gateway.http.tls.existingSecret (HTTPS on the API port)" }}
{{- end }}
{{- if and .requireClientCert (not .caKey) }}
{{- fail "gateway.http.tls.requireClientCert needs gateway.http.tls.caKey (the CAs client certificates must chain to, e.g. ca.crt)" }}
{{- end }}
{{- end }}
{{- with $v.gateway.http.auth }}
{{- if and .oidc.issuer (not .oidc.audience) }}
{{- fail "gateway.http.auth.oidc.issuer needs gateway.http.auth.oidc.audience (the aud tokens for this API carry)" }}
{{- end }}
{{- /* Without a tokens file or OpenID Connect every pod generates its own admin token into its data dir: right
for the one embedded pod (on its volume), useless behind a Service over pods with emptyDir data dirs. */}}
{{- if and (not .tokens.existingSecret) (not .oidc.issuer) (not (include "dicom-gateway.embedded" $)) (or (eq $v.mode "single") $v.api.enabled) }}
{{- fail "the API needs bearer tokens shared by its pods: set gateway.http.auth.tokens.existingSecret (a Secret with a tokens file) or gateway.http.auth.oidc.issuer and audience (only embedded single mode may use the token the gateway generates into its data dir)" }}
{{- end }}
{{- end }}
{{- /* The forward settings go to every pod (the receivers let the destinations' AE titles in): settings the
gateway refuses would stop every pod, not only the forward ones. */}}
{{- if $v.forward.enabled }}
{{- with $v.gateway.forward }}
{{- if not .destinations }}
{{- fail "forward.enabled needs at least one destination in gateway.forward.destinations ({name, ae_title, host, port}): the forward role has nowhere to send to" }}
{{- end }}
{{- $names := list }}
{{- range .destinations }}
{{- if has .name $names }}
{{- fail (printf "gateway.forward.destinations: the name %q appears more than once" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- range $rule := .rules }}
{{- range $rule.destinations }}
{{- if not (has . $names) }}
{{- fail (printf "gateway.forward.rules name the destination %q, which is not in gateway.forward.destinations" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The HL7 settings go to every pod: settings the gateway refuses would stop every pod. An HL7 port without
an allow-list is one of them (an ADT message changes what every later answer says about a patient). */}}
{{- if $v.hl7.enabled }}
{{- with $v.gateway.hl7 }}
{{- if not .allowedSenders }}
{{- fail "hl7.enabled needs at least one sender in gateway.hl7.allowedSenders ({application, facility, networks}): the gateway refuses an HL7 port without an allow-list (GATEWAY_HL7__ALLOWED_SENDERS)" }}
{{- end }}
{{- if and .tls.enabled (not .tls.existingSecret) }}
{{- fail "gateway.hl7.tls.enabled needs gateway.hl7.tls.existingSecret" }}
{{- end }}
{{- if and .tls.enabled .tls.requireClientCert (not .tls.caKey) }}
{{- fail "gateway.hl7.tls.requireClientCert needs gateway.hl7.tls.caKey (the CAs senders' certificates must chain to)" }}
{{- end }}
{{- if and .forwardTo.host (not .forwardTo.tls) (or .forwardTo.caSecret .forwardTo.clientSecret) }}
{{- fail "gateway.hl7.forwardTo.caSecret and clientSecret need gateway.hl7.forwardTo.tls" }}
{{- end }}
{{- /* The ports the listening pods open besides the HL7 port. */}}
{{- $used := dict (toString (int $v.gateway.http.port)) "gateway.http.port" }}
{{- if eq $v.mode "single" }}
{{- if include "dicom-gateway.plainDicomPort" $ }}{{ $_ := set $used (toString (int $v.gateway.dicom.port)) "gateway.dicom.port" }}{{ end }}
{{- if $v.gateway.dicom.tls.enabled }}{{ $_ := set $used (toString (int $v.gateway.dicom.tls.port)) "gateway.dicom.tls.port" }}{{ end }}
{{- if include "dicom-gateway.internalPort" $ }}{{ $_ := set $used (toString (int $v.gateway.internal.port)) "gateway.internal.port" }}{{ end }}
{{- end }}
{{- with index $used (toString (int .port)) }}
{{- fail (printf "gateway.hl7.port %d is already %s on the same pods: choose another port" (int $v.gateway.hl7.port) .) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The audit settings go to every pod (every process records); the TLS files only to the delivering ones. */}}
{{- with $v.gateway.audit }}
{{- if and .enabled .repositoryUrl (not (hasPrefix "tls://" .repositoryUrl)) (or .tls.caSecret .tls.clientSecret) }}
{{- fail "gateway.audit.tls.caSecret and clientSecret need a tls:// gateway.audit.repositoryUrl (udp:// has no TLS)" }}
{{- end }}
{{- end }}
{{- /* Settings the chart renders itself, from values it also builds objects from (ports, mounts, Secrets, probes). */}}
{{- $managed := dict "GATEWAY_HTTP__HOST" "always 0.0.0.0, so that probes and Services reach the pods" "GATEWAY_HTTP__PORT" "set gateway.http.port" "GATEWAY_NOTIFY__REPORT_ON_SAME_ASSOCIATION" "set gateway.notify.reportOnSameAssociation" "GATEWAY_XDS__REREGISTER_ON_PATIENT_CHANGE" "set gateway.xds.reregisterOnPatientChange" }}
{{- $managedPrefixes := dict "GATEWAY_HTTP__TLS__" "set gateway.http.tls" "GATEWAY_HTTP__AUTH__" "set gateway.http.auth" "GATEWAY_INTERNAL__" "set gateway.internal and gateway.notify.reportOnSameAssociation" "GATEWAY_FORWARD__" "set gateway.forward and forward.enabled" "GATEWAY_HL7__" "set gateway.hl7 and hl7.enabled" "GATEWAY_AUDIT__" "set gateway.audit" }}
{{- range $key, $_ := $v.gateway.extraConfig }}
{{- if not (hasPrefix "GATEWAY_" $key) }}
{{- fail (printf "gateway.extraConfig key %q must start with GATEWAY_" $key) }}
{{- end }}
{{- if eq $key "GATEWAY_DICOM__TLS_ONLY" }}
{{- fail "set gateway.dicom.tls.tlsOnly, not GATEWAY_DICOM__TLS_ONLY in gateway.extraConfig: the chart opens the plain DICOM port on pods, Services and NetworkPolicies from it" }}
{{- end }}
{{- if hasKey $managed $key }}
{{- fail (printf "gateway.extraConfig key %s is rendered by the chart (%s)" $key (index $managed $key)) }}
{{- end }}
{{- range $prefix, $value := $managedPrefixes }}
{{- if hasPrefix $prefix $key }}
{{- fail (printf "gateway.extraConfig key %s is rendered by the chart (%s)" $key $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
