{{/* ---------------------------------------------------------------- names and labels */}}
{{- define "slicecache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slicecache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* 52, not 63: StatefulSet pods get a "controller-revision-hash" label of name + 11 chars. */}}

{{- define "slicecache.headlessName" -}}
{{- printf "%s-headless" (include "slicecache.fullname" .) -}}
{{- end -}}

{{- define "slicecache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slicecache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slicecache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "slicecache.labels" -}}
helm.sh/chart: {{ include "slicecache.chart" . }}
{{ include "slicecache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: cache
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "slicecache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slicecache.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "slicecache.image" -}}
{{- $registry := .Values.image.registry | default ((.Values.global | default dict).imageRegistry) | default "" -}}
{{- $repository := ternary (printf "%s/%s" (trimSuffix "/" $registry) .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "slicecache.purgeSecretName" -}}
{{- .Values.purge.existingSecret | default (printf "%s-purge" (include "slicecache.fullname" .)) -}}
{{- end -}}

{{/* ---------------------------------------------------------------- config -> env */}}

{{/* One env value: booleans as true/false, whole numbers as integers (YAML numbers arrive as
     float64 and would print as 1.073741824e+09), lists and maps-in-lists as JSON. */}}
{{- define "slicecache.envValue" -}}
{{- if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if kindIs "slice" . -}}
{{- toJson . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Flattens a nested map into .out: {raw_disk_cache: {block_size: 1}} -> RAW_DISK_CACHE__BLOCK_SIZE. */}}
{{- define "slicecache.flatten" -}}
{{- $out := .out -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .map -}}
{{- $name := printf "%s%s" $prefix (upper $key) -}}
{{- if kindIs "map" $value -}}
{{- $_ := include "slicecache.flatten" (dict "out" $out "prefix" (printf "%s__" $name) "map" $value) -}}
{{- else if not (kindIs "invalid" $value) -}}
{{- $_ := set $out $name (include "slicecache.envValue" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* config: flattened, as JSON {NAME_WITHOUT_PREFIX: "value"}. */}}
{{- define "slicecache.flatConfig" -}}
{{- $out := dict -}}
{{- $_ := include "slicecache.flatten" (dict "out" $out "prefix" "" "map" (.Values.config | default dict)) -}}
{{- range $name, $owner := dict "ENABLE_L2_CACHE" "l2.enabled" "RAW_DISK_CACHE__DEVICE_PATH" "l2.mountPath and l2.fileName" "RAW_DISK_CACHE__TOTAL_SIZE" "l2.size" "PURGE__ENABLED" "purge.enabled" "PURGE__AUTH_TOKEN" "purge.token or purge.existingSecret" -}}
{{- if hasKey $out $name -}}
{{- fail (printf "config sets SLICECACHE_%s, which the chart derives from %s: set that instead" $name $owner) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The settings the chart itself needs, from config with the application's defaults. */}}
{{- define "slicecache.runtime" -}}
{{- $c := include "slicecache.flatConfig" . | fromJson -}}
{{- $drain := get $c "DRAIN_SECONDS" | default "5" | float64 | ceil | int -}}
{{- $grace := get $c "SHUTDOWN_GRACE_SECONDS" | default "20" | float64 | ceil | int -}}
{{- $preStop := $drain -}}
{{- if not (kindIs "invalid" .Values.shutdown.preStopSleepSeconds) -}}
{{- $preStop = int .Values.shutdown.preStopSleepSeconds -}}
{{- end -}}
{{- $needed := add $preStop $drain $grace (int .Values.shutdown.marginSeconds) -}}
{{- $tgps := $needed -}}
{{- if not (kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds) -}}
{{- $tgps = int .Values.shutdown.terminationGracePeriodSeconds -}}
{{- if lt $tgps (sub $needed (int .Values.shutdown.marginSeconds)) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds=%d is shorter than preStop sleep (%d) + drain_seconds (%d) + shutdown_grace_seconds (%d): streams would be killed mid-response" $tgps $preStop $drain $grace) -}}
{{- end -}}
{{- end -}}
{{- $adminPort := get $c "ADMIN_PORT" | default "0" | int -}}
{{- $port := get $c "PORT" | default "8080" | int -}}
{{- if eq $adminPort $port -}}
{{- fail (printf "config.admin_port (%d) equals config.port: use 0 to serve admin routes on the traffic port" $adminPort) -}}
{{- end -}}
{{- dict "host" (get $c "HOST" | default "0.0.0.0") "port" $port "adminPort" $adminPort "adminPrefix" (get $c "ADMIN_PREFIX" | default "/_slicecache") "drain" $drain "grace" $grace "preStop" $preStop "terminationGracePeriodSeconds" $tgps | toJson -}}
{{- end -}}

{{/* ---------------------------------------------------------------- sizes */}}

{{/* "10Gi" -> 10240 (MiB). Only Mi, Gi and Ti: the L2 size must be a whole number of MiB. */}}
{{- define "slicecache.toMiB" -}}
{{- $s := toString .value -}}
{{- $m := regexFindAll "^([0-9]+)(Mi|Gi|Ti)$" $s 1 -}}
{{- if not $m -}}
{{- fail (printf "%s=%q: write a whole number of Mi, Gi or Ti, e.g. 10Gi" .what $s) -}}
{{- end -}}
{{- $n := regexFind "^[0-9]+" $s | int64 -}}
{{- if hasSuffix "Ti" $s -}}{{ mul $n 1048576 }}{{- else if hasSuffix "Gi" $s -}}{{ mul $n 1024 }}{{- else -}}{{ $n }}{{- end -}}
{{- end -}}

{{/* A setting's size in bytes, in settings.py's syntax: 1048576, 64k, 64m, 1MiB, 4GiB, 10Gi
     (every unit a power of 1024; values.schema.json has already refused anything else). */}}
{{- define "slicecache.sizeBytes" -}}
{{- $s := toString . | trim -}}
{{- $n := regexFind "^[0-9]+" $s | int64 -}}
{{- $unit := regexFind "[kKmMgGtT]" (trimPrefix (regexFind "^[0-9]+" $s) $s) | lower -}}
{{- mul $n (get (dict "" 1 "k" 1024 "m" 1048576 "g" 1073741824 "t" 1099511627776) $unit) -}}
{{- end -}}

{{/* A Kubernetes quantity in bytes, or "" when it is not a plain integer with a unit we know. */}}
{{- define "slicecache.quantityBytes" -}}
{{- $s := toString . -}}
{{- if regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $s -}}
{{- $n := regexFind "^[0-9]+" $s | int64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $s) $s -}}
{{- $f := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000) $unit -}}
{{- mul $n $f -}}
{{- end -}}
{{- end -}}

{{/* L2 geometry and the volume size: l2.size + max(l2.size * headroomPercent / 100, minHeadroom),
     rounded up to whole MiB. An explicit persistence.size must be at least that. */}}
{{- define "slicecache.l2" -}}
{{- $l2MiB := include "slicecache.toMiB" (dict "value" .Values.l2.size "what" "l2.size") | int64 -}}
{{- if lt $l2MiB 16 -}}
{{- fail (printf "l2.size=%s is below the application's minimum of 16Mi" .Values.l2.size) -}}
{{- end -}}
{{- $pct := div (add (mul $l2MiB (int64 .Values.l2.headroomPercent)) 99) 100 -}}
{{- $min := include "slicecache.toMiB" (dict "value" .Values.l2.minHeadroom "what" "l2.minHeadroom") | int64 -}}
{{- $volMiB := add $l2MiB (max $pct $min) -}}
{{- $volume := printf "%dMi" $volMiB -}}
{{- if .Values.persistence.size -}}
{{- $given := include "slicecache.toMiB" (dict "value" .Values.persistence.size "what" "persistence.size") | int64 -}}
{{- if lt $given $volMiB -}}
{{- fail (printf "persistence.size=%s is too small for l2.size=%s: it needs at least %dMi (l2.size + max(%d%%, %s) headroom for filesystem overhead); leave it empty to derive it" .Values.persistence.size .Values.l2.size $volMiB (int .Values.l2.headroomPercent) .Values.l2.minHeadroom) -}}
{{- end -}}
{{- $volume = .Values.persistence.size -}}
{{- end -}}
{{- dict "bytes" (mul $l2MiB 1048576) "mib" $l2MiB "volume" $volume "devicePath" (printf "%s/%s" (trimSuffix "/" .Values.l2.mountPath) .Values.l2.fileName) | toJson -}}
{{- end -}}

{{/* Refuse a memory limit below L1 + in-flight cap + 100 MiB baseline (+ the L2 file on a
     memory-backed emptyDir). Quantities we cannot parse exactly (e.g. 1.5Gi) are not checked. */}}
{{- define "slicecache.memoryCheck" -}}
{{- if and .Values.memoryCheck .Values.resources .Values.resources.limits -}}
{{- with .Values.resources.limits.memory -}}
{{- $limit := include "slicecache.quantityBytes" . -}}
{{- if $limit -}}
{{- $c := include "slicecache.flatConfig" $ | fromJson -}}
{{- $l1 := include "slicecache.sizeBytes" (get $c "L1_CACHE_SIZE_BYTES" | default "104857600") | int64 -}}
{{- $inflight := include "slicecache.sizeBytes" (get $c "MAX_IN_FLIGHT_BYTES" | default "268435456") | int64 -}}
{{- $need := add $l1 $inflight 104857600 -}}
{{- if and $.Values.l2.enabled (not $.Values.persistence.enabled) (eq $.Values.persistence.emptyDir.medium "Memory") -}}
{{- $need = add $need (get (include "slicecache.l2" $ | fromJson) "bytes" | int64) -}}
{{- end -}}
{{- if lt ($limit | int64) $need -}}
{{- fail (printf "resources.limits.memory=%s (%s bytes) is below l1_cache_size_bytes (%d) + max_in_flight_bytes (%d) + 100 MiB interpreter baseline%s = %d bytes: raise the limit, lower those settings, or set memoryCheck: false" (toString .) $limit $l1 $inflight (ternary " + L2 file on a Memory emptyDir" "" (and $.Values.l2.enabled (not $.Values.persistence.enabled) (eq $.Values.persistence.emptyDir.medium "Memory"))) $need) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
