"""How far one response fetches ahead: the origin's bandwidth-delay product, bounded.

A cold response keeps several Range requests in flight, so the origin's first-byte latency
of one is hidden behind the transfers of the others. How many it takes follows from the
origin measured so far (:class:`OriginPace`: first-byte latency and per-request
throughput, moving averages): ``latency x throughput / slice size + 1`` requests of up to
``run_length`` slices each (the bandwidth-delay product in slices, plus the one being
transferred). At 50 ms and 100 MB/s per request that is 6 requests of 4 MiB, ~270 MB/s
for one client; on a 1 ms loopback origin 2 requests keep up.

That hides the latency of a stream at one request's throughput. A client that takes bytes
faster than that still reaches a slice with no byte yet although the window covered it:
the response then adds a lane (``lanes``: the product is taken once per lane), so a single
cold client grows towards the origin's aggregate capacity, one lane per starved slice; it
drops one for each slice it finds complete (a client slower than the origin), so the
window holds no more bytes for a slow client than one lane needs. Bounds:

* ``cap`` (``MAX_CONCURRENT_SUBREQUESTS``): at most this many requests per response, and
  the guess while nothing is measured yet;
* the byte budget: a response never plans more than its share of
  ``MAX_IN_FLIGHT_BYTES``, a quarter while it is one of at most four responses fetching,
  ``1/n`` of it when ``n`` responses fetch at once, so many cold clients share the origin
  evenly (the budget itself grants in arrival order, urgent requests first);
* at least one slice.

Pure: no I/O, no clock; the engine feeds :class:`OriginPace` and asks
:func:`lookahead_slices` once per slice it sends, so the window follows the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A response's budget share is 1/max(MIN_SHARES, responses fetching) of the whole.
MIN_SHARES = 4
# Weight of the newest sample in the moving averages.
ALPHA = 0.3
# Transfers shorter than this say more about scheduling than about the origin's rate.
MIN_SAMPLE_BYTES = 64 * 1024


def lookahead_slices(
    latency: float | None,
    throughput: float | None,
    *,
    slice_size: int,
    run_length: int,
    cap: int,
    budget: int,
    responses: int = 1,
    lanes: int = 1,
) -> int:
    """Slices one response keeps in flight ahead of the one it sends.

    ``latency``: the origin's first-byte latency in seconds; ``throughput``: bytes per
    second one request delivers (None: not measured yet, the cap is used). ``budget``:
    the global byte budget; ``responses``: responses fetching from the origin now;
    ``lanes``: streams at one request's throughput the response wants (starved slices).
    """
    cap = max(1, cap)
    if latency is None or throughput is None:
        requests = cap
    else:
        bdp = max(0.0, latency) * max(0.0, throughput) / slice_size
        requests = min(cap, max(1, lanes) * (math.ceil(bdp) + 1))
    share = budget // max(MIN_SHARES, responses)
    return max(1, min(requests * max(1, run_length), share // slice_size))


@dataclass
class OriginPace:
    """Moving averages of what the origin's slice requests measured."""

    latency: float | None = None  # seconds to the response head
    throughput: float | None = None  # bytes per second of one request's body

    def saw_latency(self, seconds: float) -> None:
        if seconds >= 0:
            self.latency = _mix(self.latency, seconds)

    def saw_transfer(self, nbytes: int, seconds: float) -> None:
        if nbytes >= MIN_SAMPLE_BYTES and seconds > 0:
            self.throughput = _mix(self.throughput, nbytes / seconds)


def _mix(old: float | None, new: float) -> float:
    return new if old is None else old + ALPHA * (new - old)
