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
