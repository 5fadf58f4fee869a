"""Issue 11, the engine under pressure: budgets, held bytes, splices, stalls (real servers)."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import Origin, ProxyFactory

KiB = 1024
MiB = 1024 * KiB
SLICE = 64 * KiB


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/_slicecache/metrics").text.splitlines():
        if line.startswith(f"slicecache_{name} ") or line.startswith(f"slicecache_{name}{{"):
            return float(line.split()[-1])
    raise AssertionError(f"no slicecache_{name} in /metrics")


def _settle(url: str, name: str, seconds: float = 15.0) -> float:
    """Poll a gauge until it reads 0 or the (generous) deadline passes."""
    deadline = time.monotonic() + seconds
    while (value := _metric(url, name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


async def _cold_round(url: str, tag: str, count: int) -> list[int | str]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(i: int) -> int | str:
            try:
                response = await client.get(f"{url}/files/256k-{tag}-{i}.bin")
            except httpx.HTTPError as error:
                return type(error).__name__
            if response.status_code == 200 and len(response.content) != 256 * KiB:
                return "short"
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_budget_returns_to_zero_after_concurrent_cold_gets_under_pressure(
    proxy: ProxyFactory,
) -> None:
    # The issue's repro: a probe's slice-0 fill cancelled (under budget pressure) before its
    # first step never released its prepaid grant nor closed the probe's origin response.
    settings = {"slice_size": SLICE, "max_in_flight_bytes": MiB}
    with proxy(**settings) as url:
        for round_ in range(2):
            statuses = asyncio.run(_cold_round(url, f"leak{round_}", 144))
            assert statuses.count(200) == len(statuses), statuses
            assert _settle(url, "bytes_in_flight") == 0, f"round {round_}: budget leaked"
            assert _settle(url, "slices_filling") == 0, f"round {round_}: fills left"
        # An idle proxy serves a cold object whole.
        last = httpx.get(f"{url}/files/1m-after-leak.bin", timeout=30)
        assert last.status_code == 200 and len(last.content) == MiB


def test_a_stalled_slice_cuts_the_client_off_before_every_retry_has_timed_out(
    proxy: ProxyFactory, origin: Origin
) -> None:
    # The origin sends headers, then nothing. Each attempt costs READ_TIMEOUT; without a
    # bound on the whole wait, the client waited (1 + MAX_RETRIES) of them. Measured in
    # origin attempts, not seconds: the client is answered while retries remain.
    name = "300k-stalled-slice.bin"
    origin.app.set_fault(name, "hang")
    retries = 6
    settings = {
        "slice_size": SLICE,
        "read_timeout": 1.0,
        "max_retries": retries,
        "slice_wait_timeout": 1.0,
    }
    try:
        with proxy(**settings) as url:
            response = httpx.get(f"{url}/files/{name}", timeout=60)
            attempts = len(origin.requests_for(f"/files/{name}"))
    finally:
        origin.app.set_fault(name, "")
    assert response.status_code == 504, response.status_code
    assert attempts < 1 + retries, f"the client waited through {attempts} origin attempts"
