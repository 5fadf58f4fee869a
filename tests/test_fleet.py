"""The one-machine fleet: N instances behind HAProxy hashing on the URI (scripts/fleet.py)."""

from __future__ import annotations

import shutil
import signal
import threading
import time

import httpx
import pytest

from scripts.fleet import haproxy_config, running_fleet, watch
from tests.conftest import Origin

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")

KEYS = [f"/files/20000-fleet-{i}.bin" for i in range(30)]


def owners(fleet_urls: list[str], path: str) -> list[int]:
    """Which instances hold ``path`` (asked directly, without filling anything)."""
    held = []
    for index, url in enumerate(fleet_urls):
        answer = httpx.get(f"{url}{path}", headers={"cache-control": "only-if-cached"})
        if answer.status_code == 200:
            held.append(index)
    return held


def test_haproxy_config_hashes_the_whole_uri_consistently() -> None:
    config = haproxy_config(8080, [9001, 9002])
    assert "balance uri whole" in config and "hash-type consistent" in config
    assert config.count("server s") == 2 and "/_slicecache/readyz" in config


def test_each_object_is_fetched_once_and_only_a_dead_instances_keys_move(
    origin: Origin,
) -> None:
    origin.app.clear_log()
    with running_fleet(3, origin.url.removeprefix("http://")) as fleet:
        urls = [fleet.instance_url(i) for i in range(3)]
        first = [httpx.get(f"{fleet.url}{path}") for path in KEYS]
        second = [httpx.get(f"{fleet.url}{path}") for path in KEYS]
        assert all(r.status_code == 200 for r in first + second)
        assert all(r.headers["x-cache"] == "HIT" for r in second)
        # Fetched from the origin once across the fleet, and cached on exactly one instance.
        assert all(len(origin.requests_for(path)) == 1 for path in KEYS)
        owner = {}
        for path in KEYS:
            held = owners(urls, path)
            assert len(held) == 1, (path, held)
            owner[path] = held[0]
        assert set(owner.values()) == {0, 1, 2}  # the ring spreads keys over every instance

        fleet.instances[0].send_signal(signal.SIGKILL)
        fleet.instances[0].wait(10)
        moved = [path for path in KEYS if owner[path] == 0]
        deadline = time.monotonic() + 30
        # HAProxy takes the instance out after two failed checks; meanwhile retries redispatch.
        while httpx.get(f"{fleet.url}{moved[0]}").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        after = {path: httpx.get(f"{fleet.url}{path}").headers["x-cache"] for path in KEYS}
    # Keys on the survivors did not move (still HITs); only the dead instance's ~1/3 did.
    assert all(after[path] == "HIT" for path in KEYS if owner[path] != 0), after
    assert 0 < len(moved) < len(KEYS)


def test_the_fleet_keeps_serving_when_one_instance_dies(
    origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make fleet` used to stop every instance as soon as one exited."""
    stop = threading.Event()
    with running_fleet(2, origin.url.removeprefix("http://")) as fleet:
        watcher = threading.Thread(
            target=watch, args=(fleet.instances, fleet.backends, stop.is_set, 0.05)
        )
        watcher.start()
        try:
            fleet.instances[0].send_signal(signal.SIGKILL)
            fleet.instances[0].wait(10)
            deadline = time.monotonic() + 30
            while "instance 0" not in capsys.readouterr().out and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watcher.is_alive()  # still supervising the survivor
            assert fleet.instances[1].poll() is None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if httpx.get(f"{fleet.url}{KEYS[0]}").status_code == 200:
                    break
                time.sleep(0.1)
            assert httpx.get(f"{fleet.url}{KEYS[0]}").status_code == 200
        finally:
            stop.set()
            watcher.join(10)
    assert not watcher.is_alive()
