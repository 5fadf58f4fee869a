"""The slicing engine and the object directory: how a cacheable GET is served.

A GET through the modules (app/main.py hands the sliced path to ``sliced.serve_sliced``):

1. ``sliced``       the sliced path of one request: asks the directory, answers the
                    client's Range (206, multipart, 304/412/416) from ``SliceEngine.stream``.
2. ``objects``      ObjectDirectory.open: the RFC 9111 decision (fresh, stale, revalidate,
                    only-if-cached, stale-if-error); answers are in ``opening``.
3. ``probe_sharing`` one probe per unknown or stale entry, shared by concurrent requests;
                    background revalidation.
4. ``probe``        the probe itself: slice 0 (or a revalidation) from the origin, its
                    answer judged by ``classify`` and made stored, shared or private.
5. ``adoption``     what is remembered of each object (``objectmeta``); a new version
                    adopted, an old one retired; invalidation on change or purge.
6. ``slicer``       SliceEngine.stream: the response's window over ``slices``, each slice
                    from the store, an in-flight fill, or a new run of fetches.
7. ``fetcher``      one Range request for a run of slices: ``classify``, retries.
8. ``fills``        a slice being filled, its readers, the byte budget, FetchHold (the one
                    owner of a fetch's grant and response); ``inflight``: the fills in flight
                    and what an ended fetch still holds; ``readers``: who reads which version.
Also: ``leasewriter`` (holds a response's L2 extent leases until the socket has the
bytes), ``unframed`` (is an answer without length small?), ``pressure`` (memory warnings),
``heaptrim`` (freed slice memory back to the system when idle).

Calls go one way: objects -> probe_sharing -> probe -> adoption -> slicer; the engine
reports back only through the two callbacks the directory gives it (on_unsliceable,
on_object_changed), never by importing the directory.
"""
