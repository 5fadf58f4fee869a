"""The Grafana dashboard only queries metrics (and labels) that the proxy really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyFactory

DASHBOARD = Path(__file__).resolve().parents[1] / "helm/slicecache/dashboards/slicecache.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SLICE = 64 * 1024

# Labels Prometheus adds at scrape time (ServiceMonitor target labels), not the proxy.
TARGET_LABELS = frozenset({"pod", "instance", "job", "namespace", "container", "service"})
COUNTING = re.compile(r"\b(?:rate|irate|increase)\(\s*$")
NAME = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*\b(?!\s*\()")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)  # collapsed rows keep their panels inside


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target


def metric_uses(expr: str) -> list[tuple[str, bool]]:
    """Every metric selector in ``expr``: (name, whether it sits directly in rate/increase)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
    bare = GROUPING.sub("", bare)
    return [
        (m.group(), bool(COUNTING.search(bare[: m.start()])))
        for m in NAME.finditer(bare)
        if m.group().lower() not in KEYWORDS
    ]


def labels_used(expr: str, legend: str) -> set[str]:
    used = {name.strip() for group in GROUPING.findall(expr) for name in group.split(",")}
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r"\{\{[^}]*\}\}", "", expr)):
        used |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    used |= {name.strip() for name in re.findall(r"\{\{([^}]*)\}\}", legend)}
    return used - {""}


def test_metric_uses_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{pod=~"$pod"}[$__rate_interval])))'
        " / on (pod) group_left b_total + c_gauge offset 5m"
    )
    assert metric_uses(expr) == [("a_bucket", True), ("b_total", False), ("c_gauge", False)]
    assert labels_used('sum by (cache, pod) (x{status_class="2xx"})', "{{method}}") == {
        "cache",
        "pod",
        "status_class",
        "method",
    }


def test_dashboard_is_valid_json_with_unique_ids_and_one_datasource() -> None:
    dashboard = load()
    assert 36 <= dashboard["schemaVersion"] <= 41
    all_panels = list(panels(dashboard))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["pod"]["datasource"] == DATASOURCE
    assert "label_values(slicecache_requests_total, pod)" in json.dumps(variables["pod"]["query"])
    titles = [panel["title"] for panel in all_panels if panel["type"] == "row"]
    assert titles == ["Traffic", "Cache", "Memory and flow", "L2 (raw disk)", "Purges"]
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
    for title, target in targets(dashboard):
        expr = target["expr"]
        assert target["datasource"] == DATASOURCE, title
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), (title, expr)
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable in variables or variable.startswith("__"), (title, variable)


@pytest.fixture
def exported(proxy: ProxyFactory, tmp_path: Path) -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (family type, label names) after a small workload with L2 enabled."""
    settings = {
        "slice_size": SLICE,
        "max_retries": 1,
        "enable_l2_cache": True,
        "raw_disk_cache": {"device_path": str(tmp_path / "l2.bin"), "total_size": 64 << 20},
    }
    path = "/files/300000-dashboard.bin"
    with proxy(**settings) as url:
        assert httpx.get(f"{url}{path}").headers["x-cache"] == "MISS"
        assert httpx.get(f"{url}{path}").headers["x-cache"] == "HIT"
        try:  # a truncated slice: counts a retry and an error (by kind)
            httpx.get(f"{url}/files/300000-dashboard-short.bin?fault=short")
        except httpx.TransportError:
            pass
        text = httpx.get(f"{url}/_slicecache/metrics").text
    samples: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            _, labels = samples.setdefault(sample.name, (family.type, set()))
            labels.update(sample.labels)
    return samples


def test_every_dashboard_metric_and_label_is_exported(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    dashboard = load()
    queries = [(title, t["expr"], t.get("legendFormat", "")) for title, t in targets(dashboard)]
    pod = next(v for v in dashboard["templating"]["list"] if v["name"] == "pod")
    pod_metric = re.search(r"label_values\((\w+), pod\)", json.dumps(pod))
    assert pod_metric is not None and pod_metric[1] in exported
    used: set[str] = set()
    problems: list[str] = []
    for title, expr, legend in queries:
        uses = metric_uses(expr)
        assert uses, (title, expr)
        names = {name for name, _ in uses}
        used |= names
        for name, counted in uses:
            if name not in exported:
                problems.append(f"{title}: {name} is not exported")
                continue
            kind = exported[name][0]
            if counted and kind not in ("counter", "histogram"):
                problems.append(f"{title}: rate/increase over {kind} {name}")
            if not counted and kind != "gauge":
                problems.append(f"{title}: {kind} {name} used without rate/increase")
        known = set(TARGET_LABELS).union(*(exported.get(name, ("", set()))[1] for name in names))
        for label in sorted(labels_used(expr, legend) - known):
            problems.append(f"{title}: label {label!r} is on none of {sorted(names)}")
    assert not problems, "\n".join(problems)
    # The rows the dashboard promises draw on every family they are about.
    for prefix in ("slicecache_", "slicecache_l2_", "slicecache_origin_", "cache_", "process_"):
        assert any(name.startswith(prefix) for name in used), prefix
    assert "slicecache_errors_total" in exported  # the workload's error made a sample
    assert "cache_hit_rate" not in used  # a lifetime gauge: the ratio is PromQL's


RULES = DASHBOARD.parents[1] / "alerts/rules.yaml"


def test_every_alert_metric_and_label_is_exported(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    import yaml

    text = re.sub(r"THRESHOLD_\w+", "0.5", RULES.read_text())
    rules = yaml.safe_load(text.replace("SELECTOR", 'namespace="cache", pod=~"c-[0-9]+"'))
    problems: list[str] = []
    for rule in rules:
        expr = rule["expr"]
        for name, counted in metric_uses(expr):
            if name not in exported:
                problems.append(f"{rule['alert']}: {name} is not exported")
            elif counted != (exported[name][0] in ("counter", "histogram")):
                problems.append(f"{rule['alert']}: {exported[name][0]} {name} counted={counted}")
        names = {name for name, _ in metric_uses(expr)}
        known = set(TARGET_LABELS).union(*(exported.get(n, ("", set()))[1] for n in names))
        for label in sorted(labels_used(expr, "") - known):
            problems.append(f"{rule['alert']}: label {label!r} is on none of {sorted(names)}")
    assert not problems, "\n".join(problems)
    assert len(rules) == 6
