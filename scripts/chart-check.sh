#!/usr/bin/env bash
# Offline checks of the Helm chart (helm/slicecache), run by `make chart-check` and CI:
#   1. helm lint --strict with the defaults and with every helm/slicecache/ci/*.yaml;
#   2. helm template of every ci/*.yaml for each Kubernetes version in KUBE_VERSIONS, and
#      kubernetes-validate --strict of the rendered manifests against that version's API schemas;
#   3. assertions on the rendered manifests that no schema knows: the ServiceMonitor's shape (a
#      CRD), and the chart's own rules (L2 size fits the volume, grace period covers preStop +
#      drain + grace, probes on the admin prefix, non-root/read-only, hashing annotation, ...);
#   4. every helm/slicecache/ci-broken/*.yaml must FAIL to render, with the message its first
#      line names ("# expect: <text>");
#   5. the config types in values.schema.json are never stricter than settings.py's (a value the
#      application accepts is never refused at install time).
# Needs: the pinned helm (scripts/get-helm.sh downloads it once into .tools/) and a Python with
# kubernetes-validate, PyYAML and the project's dependencies (PYTHON, default .venv/bin/python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CHART=helm/slicecache
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.33.0"}
RELEASE=ci

start=$SECONDS
fail() { echo "chart-check: FAIL: $*" >&2; exit 1; }
step() { echo "chart-check: $*"; }

[[ -x $PYTHON ]] || command -v "$PYTHON" >/dev/null || fail "no Python at $PYTHON (set PYTHON=...)"
"$PYTHON" -c "import kubernetes_validate, yaml" 2>/dev/null \
  || fail "$PYTHON lacks kubernetes-validate (pip install -e '.[test]')"

HELM=$(bash scripts/get-helm.sh)
[[ -x $HELM ]] || fail "get-helm.sh gave no helm binary"
step "using $("$HELM" version --short) and kubernetes-validate $("$PYTHON" -m kubernetes_validate --version 2>&1 | tail -1)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

shopt -s nullglob
ci_files=("$CHART"/ci/*.yaml)
broken_files=("$CHART"/ci-broken/*.yaml)
((${#ci_files[@]} > 0)) || fail "no values files in $CHART/ci/"
((${#broken_files[@]} > 0)) || fail "no values files in $CHART/ci-broken/"

# 1. lint ------------------------------------------------------------------------------------------
step "helm lint --strict (defaults + ${#ci_files[@]} ci values files)"
"$HELM" lint --strict --quiet "$CHART" >"$out/lint.log" 2>&1 || { cat "$out/lint.log" >&2; fail "helm lint --strict (defaults)"; }
for values in "${ci_files[@]}"; do
  "$HELM" lint --strict --quiet "$CHART" -f "$values" >"$out/lint.log" 2>&1 \
    || { cat "$out/lint.log" >&2; fail "helm lint --strict -f $values"; }
done

# 2. render + schema validation --------------------------------------------------------------------
for kube in $KUBE_VERSIONS; do
  rendered=()
  for values in "${ci_files[@]}"; do
    name=$(basename "$values" .yaml)
    dest=$out/$name@$kube.yaml
    "$HELM" template "$RELEASE" "$CHART" --namespace cache --kube-version "$kube" -f "$values" \
      >"$dest" 2>"$out/template.log" || { cat "$out/template.log" >&2; fail "helm template -f $values --kube-version $kube"; }
    rendered+=("$dest")
  done
  step "kubernetes-validate --strict -k $kube (${#rendered[@]} renders)"
  "$PYTHON" -m kubernetes_validate --strict --quiet -k "$kube" "${rendered[@]}" >"$out/validate.log" 2>&1 \
    || { grep -Ev "^WARN .*Couldn't find schema for kind (ServiceMonitor|PodMonitor|PrometheusRule|HTTPRoute|UpstreamSettingsPolicy)" "$out/validate.log" >&2 || true
         fail "kubernetes-validate --strict -k $kube"; }
  # The only kinds allowed to be unknown to the schemas are the CRDs checked in step 3.
  if grep "^WARN" "$out/validate.log" | grep -Ev "kind (ServiceMonitor|PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1|kind HTTPRoute with api version gateway.networking.k8s.io/v1|kind UpstreamSettingsPolicy with api version gateway.nginx.org/v1alpha1" >&2; then
    fail "kubernetes-validate -k $kube warned about a kind it could not check"
  fi
done

# 3. the chart's own rules, and the CRD nobody else checks ----------------------------------------
step "assertions on the rendered manifests (ServiceMonitor shape, sizes, shutdown timing, security)"
"$PYTHON" - "$out" <<'PY' || fail "assertions on the rendered manifests (see above)"
import glob
import os
import re
import sys

import yaml

out = sys.argv[1]
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


def qty(text):
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti|)", str(text))
    assert m, f"unexpected quantity {text!r}"
    return int(m.group(1)) * UNITS[m.group(2)]


def check(path):
    name = os.path.basename(path)
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {}
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), f"{name}: object without apiVersion/kind"
        kinds.setdefault(d["kind"], []).append(d)
    for required in ("StatefulSet", "Service"):
        assert required in kinds, f"{name}: no {required}"
    (sts,) = kinds["StatefulSet"]
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    c = next(x for x in spec["containers"] if x["name"] == "slicecache")  # sidecars may follow
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"{name}: duplicate env names {names}"
    for key in ("SLICECACHE_HOST", "SLICECACHE_PORT", "SLICECACHE_ADMIN_PREFIX",
                "SLICECACHE_DRAIN_SECONDS", "SLICECACHE_SHUTDOWN_GRACE_SECONDS"):
        assert key in env, f"{name}: {key} not set"
    for value in env.values():
        assert value is None or not re.fullmatch(r"[0-9.]+e[+-][0-9]+", value), \
            f"{name}: a number rendered in float notation: {value}"

    # Ports and probes on the admin routes.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env["SLICECACHE_PORT"]), f"{name}: containerPort != SLICECACHE_PORT"
    admin_port = int(env.get("SLICECACHE_ADMIN_PORT") or 0)
    probe_port = "admin" if admin_port else "http"
    if admin_port:
        assert ports.get("admin") == admin_port, f"{name}: no admin containerPort"
    prefix = env["SLICECACHE_ADMIN_PREFIX"]
    for probe, route in (("livenessProbe", "healthz"), ("readinessProbe", "readyz"),
                         ("startupProbe", "healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == f"{prefix}/{route}", f"{name}: {probe} path {get['path']}"
        assert get["port"] == probe_port, f"{name}: {probe} on port {get['port']}"

    # Shutdown: the grace period covers preStop + drain + in-flight grace.
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre["sleep"]["seconds"] if "sleep" in pre else int(pre["exec"]["command"][-1]) if pre else 0
    need = pre_s + int(env["SLICECACHE_DRAIN_SECONDS"]) + int(env["SLICECACHE_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] >= need, \
        f"{name}: terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} < {need}"
    kube = name.rsplit("@", 1)[1].removesuffix(".yaml")
    if pre:
        newer = tuple(map(int, kube.split("."))) >= (1, 30, 0)
        assert ("sleep" in pre) == newer, f"{name}: preStop sleep action must be used from 1.30 on only"

    # Security.
    psc, csc = spec["securityContext"], c["securityContext"]
    assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"{name}: pod may run as root"
    assert csc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem writable"
    assert csc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed"
    assert spec.get("automountServiceAccountToken") is False, f"{name}: service account token mounted"

    # L2: path and size wired into the env, and the file fits the volume with headroom.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    if env.get("SLICECACHE_ENABLE_L2_CACHE") == "true":
        size = int(env["SLICECACHE_RAW_DISK_CACHE__TOTAL_SIZE"])
        device = env["SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH"]
        assert os.path.dirname(device) == mounts["l2"], f"{name}: L2 file {device} not on the l2 volume"
        assert size % 2**20 == 0 and size >= 16 * 2**20, f"{name}: L2 size {size}"
        claims = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates", [])}
        if "l2" in claims:
            volume = qty(claims["l2"]["spec"]["resources"]["requests"]["storage"])
        else:
            (vol,) = [v for v in spec["volumes"] if v["name"] == "l2"]
            volume = qty(vol["emptyDir"]["sizeLimit"])
        assert volume >= size + min(size // 20, 256 * 2**20), f"{name}: volume {volume} too small for L2 {size}"
    else:
        assert "l2" not in mounts and "SLICECACHE_RAW_DISK_CACHE__TOTAL_SIZE" not in env

    # Services: a headless one named as the StatefulSet's serviceName.
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    headless = services.get(sts["spec"]["serviceName"])
    assert headless and headless["spec"].get("clusterIP") == "None", f"{name}: no headless serviceName"
    pod_labels = pod["metadata"]["labels"]
    for s in services.values():
        assert s["spec"]["selector"].items() <= pod_labels.items(), f"{name}: Service selects no pod"

    for pdb in kinds.get("PodDisruptionBudget", []):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for hpa in kinds.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("StatefulSet", sts["metadata"]["name"])
        assert "replicas" not in sts["spec"], f"{name}: replicas set while an HPA owns the count"
    for ing in kinds.get("Ingress", []):
        ann = ing["metadata"].get("annotations", {})
        assert ann.get("nginx.ingress.kubernetes.io/upstream-hash-by"), f"{name}: Ingress without hashing"
        assert ann.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off"
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["backend"]["service"]["name"] in services

    # ServiceMonitor: a CRD, unknown to kubernetes-validate, so its shape is checked here.
    for sm in kinds.get("ServiceMonitor", []):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1", sm["apiVersion"]
        assert sm["kind"] == "ServiceMonitor"
        assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel",
                                   "targetLabels", "podTargetLabels", "sampleLimit"}, sorted(sm["spec"])
        selected = [s for s in services.values()
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected == [headless], f"{name}: ServiceMonitor must select exactly the headless Service"
        endpoints = sm["spec"]["endpoints"]
        assert isinstance(endpoints, list) and endpoints, f"{name}: no endpoints"
        svc_ports = {p["name"] for p in headless["spec"]["ports"]}
        for ep in endpoints:
            assert ep["port"] in svc_ports, f"{name}: endpoint port {ep['port']} not on {svc_ports}"
            assert ep["path"] == f"{prefix}/metrics", f"{name}: scrape path {ep['path']}"
            assert ep.get("scheme", "http") in {"http", "https"}
            for key in ("interval", "scrapeTimeout"):
                assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[key]), f"{name}: {key}={ep[key]}"
            for relabel in ep.get("relabelings", []) + ep.get("metricRelabelings", []):
                assert isinstance(relabel, dict)
    # PrometheusRule (a CRD): groups of rules, each alert with expr, for, severity, summary.
    for rule in kinds.get("PrometheusRule", []):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(rule["spec"]) == {"groups"}, sorted(rule["spec"])
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        names = {r["alert"] for r in alerts}
        for wanted in ("SlicecacheOriginErrors", "Slicecache5xxRate", "SlicecacheL2Errors",
                       "SlicecacheWriteBehindDrops", "SlicecacheInFlightBudgetExhausted",
                       "SlicecacheHitRatioCollapse"):
            assert wanted in names, f"{name}: no alert {wanted}"
        for r in alerts:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, sorted(r)
            assert r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"] and re.fullmatch(r"[0-9]+[smh]", r["for"])
            expr = r["expr"]
            assert "SELECTOR" not in expr and "THRESHOLD_" not in expr, f"{name}: {expr}"
            assert f'pod=~"{sts["metadata"]["name"]}-[0-9]+"' in expr, f"{name}: {r['alert']} selects no pod"
            for opening, closing in ("()", "[]", "{}"):
                assert expr.count(opening) == expr.count(closing), f"{name}: {r['alert']}"
    # PodMonitor (a CRD): every pod of the release, ready or not, on the admin prefix.
    for pm in kinds.get("PodMonitor", []):
        assert pm["apiVersion"] == "monitoring.coreos.com/v1"
        assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), f"{name}: PodMonitor selects no pod"
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports, f"{name}: PodMonitor port {ep['port']}"
            assert ep["path"] == f"{prefix}/metrics", f"{name}: scrape path {ep['path']}"
    # NetworkPolicy: lets in the ports the pod listens on.
    for np in kinds.get("NetworkPolicy", []):
        allowed = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
        assert set(ports.values()) <= allowed, f"{name}: NetworkPolicy blocks {ports}"
    # Image registry: global.imageRegistry / image.registry prefix the repository.
    if "conventions" in name:
        assert c["image"].startswith("registry.example.com/slicecache:"), c["image"]
        assert [x["name"] for x in spec["containers"]] == ["slicecache", "log-shipper"]
        assert spec["initContainers"][0]["name"] == "wait-for-origin"
        assert sts["spec"]["revisionHistoryLimit"] == 3 and sts["spec"]["minReadySeconds"] == 10
        (svc,) = [s for s in services.values() if s["spec"]["type"] == "LoadBalancer"]
        assert svc["spec"]["ports"][0]["nodePort"] == 30080
    # Gateway API: the HTTPRoute reaches the Service; the hash policy targets that Service.
    for route in kinds.get("HTTPRoute", []):
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"], f"{name}: HTTPRoute without parentRefs"
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                svc = services[ref["name"]]
                assert ref["port"] in {p["port"] for p in svc["spec"]["ports"]}, f"{name}: backend port"
        policies = kinds.get("UpstreamSettingsPolicy", [])
        assert len(policies) == 1, f"{name}: HTTPRoute without a hash policy"
        (policy,) = policies
        spec = policy["spec"]
        assert spec["loadBalancingMethod"] == "hash consistent" and spec["hashMethodKey"] == "$request_uri"
        assert [t["name"] for t in spec["targetRefs"]] == [ref["name"]], f"{name}: policy target"
    # The dashboard ConfigMap: the sidecar label, and the JSON intact.
    for cm in kinds.get("ConfigMap", []):
        if not cm["metadata"]["name"].endswith("-dashboard"):
            continue
        assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{name}: sidecar label"
        import json
        dashboard = json.loads(cm["data"]["slicecache.json"])
        assert dashboard["title"] and dashboard["panels"], f"{name}: dashboard JSON"
    return {k: len(v) for k, v in kinds.items()}


files = sorted(glob.glob(os.path.join(out, "*@*.yaml")))
assert files, "nothing rendered"
seen = set()
for path in files:
    for kind in check(path):
        seen.add(kind)
for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
             "ServiceMonitor", "Ingress", "Secret", "ServiceAccount", "PrometheusRule",
             "ConfigMap", "HTTPRoute", "UpstreamSettingsPolicy", "PodMonitor", "NetworkPolicy"):
    assert kind in seen, f"no ci values file renders a {kind}"
print(f"chart-check: {len(files)} renders checked, kinds: {', '.join(sorted(seen))}")
PY

# 4. values that must be refused -------------------------------------------------------------------
step "${#broken_files[@]} broken values files must fail"
for values in "${broken_files[@]}"; do
  expect=$(sed -n '1s/^# expect: //p' "$values")
  [[ -n $expect ]] || fail "$values: first line must be '# expect: <part of the error message>'"
  if "$HELM" template "$RELEASE" "$CHART" -f "$values" >/dev/null 2>"$out/broken.log"; then
    fail "$values rendered, but must be refused ($expect)"
  fi
  grep -qF -- "$expect" "$out/broken.log" \
    || { cat "$out/broken.log" >&2; fail "$values failed, but not with '$expect'"; }
done

# 5. values.schema.json vs settings.py -------------------------------------------------------------
step "values.schema.json config types vs settings.py"
"$PYTHON" - "$CHART/values.schema.json" <<'PY' || fail "values.schema.json vs settings.py (see above)"
import json
import math
import sys

sys.path.insert(0, ".")
from settings import Settings  # noqa: E402

chart = json.load(open(sys.argv[1]))["properties"]["config"]["properties"]
app = Settings.model_json_schema()
defs = app.get("$defs", {})


def resolve(node):
    if "$ref" in node:
        return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
    if "allOf" in node and len(node["allOf"]) == 1:
        return resolve(node["allOf"][0])
    return node


def types(node):
    t = node.get("type")
    if t is None and "anyOf" in node:
        return set().union(*(types(resolve(n)) for n in node["anyOf"]))
    found = set(t if isinstance(t, list) else [t] if t else [])
    if "integer" in found:
        found.add("number")  # an integer is a number
    return found


def bounds(node):
    low = max(node.get("minimum", -math.inf), node.get("exclusiveMinimum", -math.inf))
    high = min(node.get("maximum", math.inf), node.get("exclusiveMaximum", math.inf))
    return low, "exclusiveMinimum" in node and node["exclusiveMinimum"] >= node.get("minimum", -math.inf), \
        high, "exclusiveMaximum" in node and node["exclusiveMaximum"] <= node.get("maximum", math.inf)


problems, untyped, upcoming = [], [], []
# Set by the chart from its own values (l2.*, purge.*), refused in config:.
OWNED = {"enable_l2_cache", "raw_disk_cache.device_path", "raw_disk_cache.total_size",
         "purge.enabled", "purge.auth_token"}


def compare(chart_props, app_props, path):
    for key, app_node in app_props.items():
        app_node = resolve(app_node)
        where = ".".join(path + [key])
        if key not in chart_props:
            if where not in OWNED:
                untyped.append(where)
            continue
        node = chart_props[key]
        if "properties" in app_node:
            compare(node.get("properties", {}), app_node["properties"], path + [key])
            continue
        app_types, chart_types = types(app_node), types(node)
        if chart_types and not app_types <= chart_types:
            problems.append(f"config.{where}: chart type {sorted(chart_types)} refuses the app's {sorted(app_types)}")
        lo_c, lo_c_ex, hi_c, hi_c_ex = bounds(node)
        lo_a, lo_a_ex, hi_a, hi_a_ex = bounds(app_node)
        if lo_c > lo_a or (lo_c == lo_a and lo_c_ex and not lo_a_ex):
            problems.append(f"config.{where}: chart lower bound {lo_c} is stricter than the app's {lo_a}")
        if hi_c < hi_a or (hi_c == hi_a and hi_c_ex and not hi_a_ex):
            problems.append(f"config.{where}: chart upper bound {hi_c} is stricter than the app's {hi_a}")
        if not chart_types and where in OWNED:
            continue  # typed only so that the template can name the value to set instead
        if "enum" in node and "enum" not in app_node and key != "block_size":
            problems.append(f"config.{where}: chart has an enum the app does not")
        if key == "block_size":  # the app checks a power of two in a validator, the chart lists them
            enum = next(n for n in node.get("anyOf", [node]) if "enum" in n)["enum"]
            allowed = [v for v in enum if lo_a <= v <= hi_a]
            if allowed != [2**i for i in range(int(math.log2(lo_a)), int(math.log2(hi_a)) + 1)]:
                problems.append(f"config.{where}: enum {enum} != powers of two in [{lo_a}, {hi_a}]")
    for key in chart_props:
        if key not in app_props and "properties" not in chart_props[key]:
            upcoming.append(".".join(path + [key]))


compare(chart, app["properties"], [])
if untyped:  # config: refuses unknown keys, so an untyped setting could not be set at all
    problems.append("settings missing from values.schema.json config (refused at install): "
                    + ", ".join(untyped))
if upcoming:
    print("chart-check: typed in values.schema.json but not (yet) in settings.py: " + ", ".join(upcoming))
if problems:
    print("\n".join("chart-check: FAIL: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
PY

step "OK in $((SECONDS - start))s"
