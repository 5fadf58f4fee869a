"""The bench report's computed prose: figures come from the run's results, never constants."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.harness import MB, MiB


def _target_c(slice_size: int, run_slices: int, latency_ms: float, cap: float) -> dict[str, Any]:
    detail = {}
    for lookahead in (4, 8):
        run = run_slices * slice_size
        request_s = latency_ms / 1000 + run / (cap * MB)
        detail[str(lookahead)] = {  # JSON keys, as the results file holds them
            "bound_mbps": lookahead * run / request_s / MB,
            "slice_size": slice_size,
            "slices_per_subrequest": run_slices,
            "lookahead": lookahead,
            "latency_ms": latency_ms,
            "cap_mbps": cap,
            "single_slice_bound_mbps": lookahead
            * slice_size
            / (latency_ms / 1000 + slice_size / (cap * MB))
            / MB,
        }
    return {"detail": detail}


def test_target_c_bound_is_computed_from_the_runs_settings() -> None:
    # The defaults reproduce the published figures...
    text = report._target_c_bound(_target_c(MiB, 4, 20, 50))
    assert "= 161 MB/s at lookahead 4" in text and "= 323 MB/s at lookahead 8" in text
    assert "102 MB/s" in text
    # ...and other settings give other figures, not the copied ones.
    other = report._target_c_bound(_target_c(2 * MiB, 2, 40, 50))
    assert "161" not in other and "SLICES_PER_SUBREQUEST` = 2 slices of 2 MiB" in other
    # A results file without the settings gets no bound at all rather than a made-up one.
    assert report._target_c_bound({"detail": {"4": {"bound_mbps": 1.0}}}) == ""


def test_the_report_names_the_client_that_measured() -> None:
    assert report._client({"clients_used": ["aiohttp"]}) == "aiohttp"
    assert "aiohttp" in report._ttfb_meaning({"clients_used": ["aiohttp"]})
    assert "time_starttransfer" not in report._ttfb_meaning({"clients_used": ["aiohttp"]})
    assert "time_starttransfer" in report._ttfb_meaning({"clients_used": ["curl"]})
    machine = {"curl": "not installed (aiohttp client used)"}
    assert report._client({"machine": machine}) == "aiohttp"


def _window(clients: int, mbps: float, fairness: float = 1.0) -> dict[str, Any]:
    return {
        "clients": clients,
        "mbps": mbps,
        "fairness": fairness,
        "cpu_s_per_gb": 0.5,
        "peak_anon_rss": 64 * MiB,
        "origin_bytes": 0,
    }


def _peer(rps: float, mbps: float) -> dict[str, Any]:
    return {
        "hit4k": {"rps": rps, "cpu_ms_per_1000": 1e6 / rps},
        "range": {"total_p50": 0.001, "ttfb_p50": 0.0005},
        "cold_ttfb": {"ttfb_p50": 0.051},
        "big": [_window(n, mbps * n) for n in (1, 16, 64)],
        "cold_big": {"total_s": 1.0, "cpu_s_per_gb": 1.0, "origin_ratio": 1.0},
        "mid": [_window(64, mbps)],
    }


def test_peer_table_gives_every_figure_as_a_ratio_to_nginx() -> None:
    slicecache = _peer(10_000, 3000)
    slicecache["big"][2]["starved"] = 3
    results: dict[str, Any] = {
        "peers": {
            "config": {"big_mib": 1024, "cold_mib": 100, "window_s": 2, "wrk_seconds": 3},
            "origin": {"cold_ttfb": {"ttfb_p50": 0.0507}},
            "nginx": _peer(40_000, 2000),
            "varnish": {"skipped": "varnish not installed or failed to start"},
            "slicecache": slicecache,
        }
    }
    text = report.peer_table(results)
    row = next(line for line in text.splitlines() if "req/s" in line)
    # nginx 40,000, Varnish n/a (skipped), slicecache 10,000 = 0.25x nginx
    assert "| 40,000 | n/a | 10,000 | n/a | 0.25x | higher |" in row
    cpu = next(line for line in text.splitlines() if "CPU per 1,000" in line)
    assert "25.0 ms" in cpu and "100.0 ms" in cpu and "| 4.00x | lower |" in cpu
    assert "origin alone: 50.7 ms" in text and "cached 1 GiB" in text
    assert "64 clients: aggregate MB/s | 128,000 |" in text
    section = report._peer_figures_section(results, [])
    assert "Varnish: skipped (varnish not installed" in section
    assert "slicecache: 3 of 64 connections received no byte in the 2 s window" in section


def test_peer_rounds_are_merged_into_medians() -> None:
    from bench.run import median_of

    rounds: list[dict[str, Any]] = [
        {
            "hit4k": {"rps": 100.0, "tool": "wrk", "errors": 0},
            "big": [{"clients": 1, "mbps": 10.0}, {"clients": 16, "mbps": 30.0}],
            "big_warm_ok": True,
            "cold_big": {"total_s": float("nan"), "ok": False},
            "note": "first",
        },
        {
            "hit4k": {"rps": 300.0, "tool": "wrk", "errors": 2},
            "big": [{"clients": 1, "mbps": 20.0}, {"clients": 16, "mbps": 50.0}],
            "big_warm_ok": False,
            "cold_big": {"total_s": 0.5, "ok": True},
            "note": "second",
        },
        {
            "hit4k": {"rps": 200.0, "tool": "wrk", "errors": 1},
            "big": [{"clients": 1, "mbps": 90.0}, {"clients": 16, "mbps": 40.0}],
            "big_warm_ok": True,
            "cold_big": {"total_s": 0.7, "ok": True},
            "note": "third",
        },
    ]
    merged = median_of(rounds)
    assert merged["hit4k"] == {"rps": 200.0, "tool": "wrk", "errors": 1}
    assert merged["big"] == [{"clients": 1, "mbps": 20.0}, {"clients": 16, "mbps": 40.0}]
    assert isinstance(merged["big"][1]["clients"], int)  # labels read "16 clients"
    assert merged["big_warm_ok"] is True  # flags are not averaged: the first round's
    assert merged["cold_big"]["total_s"] == 0.6  # a round without a figure does not count
    assert merged["note"] == "first"
    assert median_of(rounds[:1]) == rounds[0]


def test_a_failed_peer_round_is_said_not_hidden(tmp_path: Any, monkeypatch: Any) -> None:
    """The median of the rounds that ran, with the lost rounds in the peer's note; a peer
    with no round at all is skipped with the last reason."""
    import contextlib
    from dataclasses import replace

    from bench import run

    config = replace(run.Config.make(quick=False), peer_rounds=2)
    bench = run.Bench(config, tmp_path, ("peers",), ())
    (tmp_path / "raw").mkdir()
    calls: dict[str, int] = {}
    opened: list[str] = []

    @contextlib.contextmanager
    def peer(which: str) -> Any:
        calls[which] = calls.get(which, 0) + 1
        opened.append(which)
        if which == "varnish":
            yield None, "varnish not installed"
        else:
            yield object(), ""

    def cases(server: object) -> dict[str, Any]:
        which = opened[-1]
        if which == "nginx" and calls["nginx"] == 2:
            raise RuntimeError("window failed")
        return {"hit4k": {"rps": 100.0 * calls[which]}}

    monkeypatch.setattr(bench, "peer", peer)
    monkeypatch.setattr(bench, "_peer_cases", cases)
    monkeypatch.setattr(bench, "_peer_cold_ttfb", lambda base: {"ttfb_p50": 0.05})
    monkeypatch.setattr(run.Bench, "o", property(lambda self: type("O", (), {"url": ""})()))
    bench.run_peers()
    peers = bench.results["peers"]
    assert peers["varnish"] == {"skipped": "varnish not installed"}
    assert peers["slicecache"]["hit4k"]["rps"] == 150.0  # median of 100 and 200
    assert len(peers["slicecache"]["rounds"]) == 2
    assert "failed" not in peers["slicecache"]["note"]
    assert peers["nginx"]["hit4k"]["rps"] == 100.0  # the one round that ran
    assert peers["nginx"]["note"] == "1 of 2 rounds failed (RuntimeError: window failed)"
