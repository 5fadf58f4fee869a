"""Every knob of slicecache, read from the environment (prefix ``SLICECACHE_``, nesting ``__``).

The names follow the prototype's configuration keys so its users find them. A value that
breaks a rule stops the process at startup with one line naming the variable and the rule
(see :func:`load_settings`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

ENV_PREFIX = "SLICECACHE_"
NESTED_DELIMITER = "__"

# One size syntax for every byte setting (env, chart, CLI): plain bytes, or a number with a
# binary unit in nginx's style (k, m, g, t) or Kubernetes' (Ki, Mi, Gi, Ti), optionally
# followed by B (KiB, MiB, GiB). Every unit is a power of 1024. KB/MB/GB are refused:
# whether they mean 1000 or 1024 is exactly the surprise this syntax avoids.
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(?:i?b?)?|(b))?\s*", re.IGNORECASE)
_UNIT = {"k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}
SIZE_SYNTAX = "a size such as 1048576, 64k, 64m, 1MiB, 4GiB or 10Gi (units are powers of 1024)"


def parse_size(value: Any) -> Any:
    """``"64m"``, ``"1MiB"``, ``"10Gi"`` or ``"1048576"`` -> bytes; other types pass through."""
    if isinstance(value, bool) or not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value)
    if match is None or re.search(r"[kmgt]b", value, re.IGNORECASE):
        raise ValueError(f"{value!r} is not {SIZE_SYNTAX}")
    number, unit, _ = match.groups()
    return int(number) * (_UNIT[unit.lower()] if unit else 1)


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that divides them exactly (``1048576`` -> ``1MiB``)."""
    for name, factor in (("TiB", 1024 * GiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size and size % factor == 0:
            return f"{size // factor}{name}"
    return str(size)


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class RawDiskCacheSettings(BaseModel):
    """The L2 device: one preallocated file (or block device) used as a raw block store."""

    # A misspelt key in the JSON form (SLICECACHE_PURGE='{"enabeld": true}') is refused
    # like a misspelt variable, not silently left at its default.
    model_config = ConfigDict(extra="forbid")

    device_path: str = Field(
        default="/var/cache/slicecache/l2.bin",
        description="File (created and preallocated) or block device holding the L2 store.",
    )
    total_size: ByteSize = Field(
        default=1 * GiB, ge=16 * MiB, description="Size of the device in bytes."
    )
    block_size: ByteSize = Field(
        default=4 * KiB,
        ge=512,
        le=1 * MiB,
        description="Allocation unit in bytes: a power of two from 512 B to 1 MiB.",
    )
    use_direct_io: bool = Field(
        default=True,
        description="Write extents with O_DIRECT: no CPU copy into the page cache (the miss "
        "path's largest cost) and no second copy in RAM of what L1 holds; the first read of "
        "an extent after its write comes from the disk, later reads from the page cache. "
        "Buffered, with a warning, where the filesystem refuses it (tmpfs).",
    )
    enable_compression: bool = Field(
        default=False, description="zstd-compress slices when it saves at least ~10 %."
    )
    enable_prefetch: bool = Field(
        default=True,
        description="madvise(WILLNEED) the next slice of a sequential read in the background.",
    )
    sync_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds between fsyncs of the index journal (the most a crash can lose).",
    )
    reformat: bool = Field(
        default=False,
        description="Reformat a device whose geometry or format version does not match.",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two between 512 and 1048576")
        return value


class PurgeSettings(BaseModel):
    """HTTP PURGE of cached objects."""

    # A misspelt key in the JSON form (SLICECACHE_PURGE='{"enabeld": true}') is refused
    # like a misspelt variable, not silently left at its default.
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Accept PURGE requests.")
    auth_token: str = Field(
        default="", description="Bearer token PURGE must present; empty = PURGE refused (401)."
    )


class Settings(BaseSettings):
    """slicecache's configuration. See README.md for the table of every variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="ignore",
        validate_default=True,
    )

    # --- listening -------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the console script binds.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the console script binds.")

    keep_alive_seconds: float = Field(
        default=75.0,
        gt=0,
        le=3600,
        description="Seconds an idle client connection is kept open; above the 60 s idle "
        "timeout of common load balancers, so the balancer, not the proxy, closes it.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs (JSON list or comma-separated) of proxies whose X-Forwarded-For "
        "names the client (for the admin network check and the access log); "
        "empty = the TCP peer is the client.",
    )

    # --- origin ----------------------------------------------------------------------------
    upstream_address: str = Field(
        default="127.0.0.1:8081",
        description="The origin: host:port or http[s]://host:port (no path).",
    )
    preserve_host: bool = Field(
        default=False,
        description="Send the client's Host header to the origin instead of the origin's.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to open a connection to the origin."
    )
    read_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds the origin may stay silent mid-response; a slice request's whole"
            " response head must arrive within it."
        ),
    )
    total_timeout: float = Field(
        default=0.0,
        ge=0,
        description="Seconds one upstream exchange may take in all, body included; 0 = no limit.",
    )
    warning_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Seconds between repeated warnings of one kind (origin failures, "
        "evictions under pressure, fast-path failures, and the L2 tier's write-behind drops, "
        "failed reads and writes, records that fail verification and skipped checkpoints): "
        "the first is logged at once, later ones are counted into the next line; 0 = every "
        "one.",
    )
    upstream_pool_size: int = Field(
        default=100,
        ge=1,
        le=10000,
        description=(
            "Most connections open to the origin at once, per origin client: slice requests"
            " have a pool of this size, and all other requests another."
        ),
    )
    upstream_keepalive_seconds: float = Field(
        default=3.0,
        gt=0,
        le=300,
        description="Seconds an idle origin connection is kept for reuse; keep it below the "
        "origin's keep-alive timeout (often 5 s), or it may close one as it is reused.",
    )

    # --- slicing ---------------------------------------------------------------------------
    slice_size: ByteSize = Field(
        default=1 * MiB,
        ge=64 * KiB,
        le=64 * MiB,
        description="Bytes per slice, from 64 KiB to 64 MiB.",
    )
    max_concurrent_subrequests: int = Field(
        default=8,
        ge=1,
        le=64,
        description="At most this many Range requests in flight ahead of one client. How "
        "many it takes is measured: the origin's first-byte latency x per-request "
        "throughput / SLICE_SIZE + 1 (its bandwidth-delay product), once more for each "
        "slice a client had to wait for (once less for each it found complete), within a "
        "share of MAX_IN_FLIGHT_BYTES; this cap until the origin was measured.",
    )
    slices_per_subrequest: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Consecutive missing slices one Range request fetches (the origin's "
        "first-byte latency is paid once per request); the lookahead is up to "
        "MAX_CONCURRENT_SUBREQUESTS such requests.",
    )
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a slice fetch on connect errors, 5xx."
    )
    slice_wait_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a client may wait in all for the bytes of one slice, every "
        "retry included; then 504 (or an aborted response once bytes were sent).",
    )
    slice_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Regexes (JSON list or comma-separated) of paths to slice; empty = all.",
    )
    max_in_flight_bytes: ByteSize = Field(
        default=256 * MiB,
        ge=1 * MiB,
        description="Global cap on bytes of slices being fetched from the origin at once.",
    )

    # --- caching ---------------------------------------------------------------------------
    enable_cache: bool = Field(default=True, description="Cache anything at all.")
    cache_ttl: int = Field(
        default=0,
        ge=0,
        description="Operator override (like nginx proxy_cache_valid): seconds a 200, 203 "
        "or 204 is fresh when the origin sent no Cache-Control freshness, no Expires and no "
        "Last-Modified. 0 = RFC 9111: such a response is stored but revalidated (or "
        "refetched) before every reuse. Cache-Status says detail=default-ttl when it applied.",
    )
    targeted_cache_control: str = Field(
        default="Slicecache-Cache-Control",
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$",
        description="The origin's targeted cache-control field for this cache (RFC 9213), "
        "obeyed before CDN-Cache-Control and both before Cache-Control/Expires; empty = "
        "CDN-Cache-Control only. Forwarded downstream unchanged.",
    )
    stale_if_error_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Seconds past expiry a stale object may stand in for a failed origin "
        "when the origin gives no stale-if-error (a must-revalidate or no-cache still wins).",
    )
    write_behind_queue_size: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description=(
            "Slices waiting to be written to L2; when full, fills wait for room; only an L2"
            " stuck for 5 s drops writes (counted, logged once a minute)."
        ),
    )
    l1_cache_size_bytes: ByteSize = Field(
        default=100 * MiB, ge=0, description="Budget of the in-memory tier in bytes."
    )
    enable_l2_cache: bool = Field(default=False, description="Use the raw-disk tier (L2).")
    raw_disk_cache: RawDiskCacheSettings = Field(default_factory=RawDiskCacheSettings)

    # --- operations ------------------------------------------------------------------------
    purge: PurgeSettings = Field(default_factory=PurgeSettings)
    admin_prefix: str = Field(
        default="/_slicecache",
        description="Path prefix of the admin routes (healthz, readyz, metrics, stats).",
    )
    admin_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve the admin routes only on this port (0 = on the main port).",
    )
    admin_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs (JSON list or comma-separated) allowed to reach admin routes; "
        "empty = everyone.",
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="After SIGTERM: readyz fails while requests are still served this long.",
    )
    shutdown_grace_seconds: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="After draining: how long in-flight responses may take to finish.",
    )
    max_request_target_bytes: ByteSize = Field(
        default=8192, ge=256, le=1_048_576, description="Longest request target (else 414)."
    )
    max_header_bytes: ByteSize = Field(
        default=65536, ge=1024, le=16_777_216, description="Most request header bytes (else 431)."
    )
    request_head_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a whole request head, and the longest "
        "pause within a request body (else 408 and close).",
    )
    send_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds a client may take none of a response's bytes while the proxy "
        "waits to write more (nginx's send_timeout); then the connection is closed, "
        "counted in slicecache_client_send_timeouts_total and logged.",
    )
    max_client_connections: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Most client connections; past it the one idle longest is closed "
        "(503 if none is idle).",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    access_log_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests written to the access log: 1 = every one, 0 = none. "
        "5xx and aborted responses are always written; metrics count every request.",
    )
    access_log_buffer_bytes: ByteSize = Field(
        default=65536,
        ge=0,
        le=16 * 1024 * 1024,
        description="Access lines are written in blocks of up to this many bytes (as "
        "nginx's access_log buffer=): one write per line cost a system call per request. "
        "0 writes every line at once.",
    )
    access_log_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Most seconds an access line waits in the buffer before it is written "
        "(as nginx's access_log flush=); the buffer is also written at shutdown.",
    )
    fast_path: bool = Field(
        default=True,
        description="Answer a plain fresh hit of up to one slice's length held in L1 from the "
        "connection's protocol, without the ASGI request cycle (same bytes, log line and "
        "metrics as the normal path); false sends every request the normal way.",
    )

    @field_validator("upstream_address")
    @classmethod
    def _valid_upstream(cls, value: str) -> str:
        upstream_url(value)
        return value

    @field_validator("slice_patterns", "admin_allow_networks", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("slice_patterns")
    @classmethod
    def _compilable(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex: {exc}") from None
        return patterns

    @field_validator("admin_allow_networks", "trusted_proxies")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network such as 10.0.0.0/8") from None
        return networks

    @field_validator("admin_prefix")
    @classmethod
    def _admin_prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or len(value) < 2:
            raise ValueError("must start with '/' and not end with '/', e.g. /_slicecache")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.admin_port and self.admin_port == self.port:
            raise ValueError("ADMIN_PORT must differ from PORT (0 = admin on the main port)")
        return self

    @model_validator(mode="after")
    def _l2_fits_blocks(self) -> Settings:
        disk = self.raw_disk_cache
        if disk.total_size % disk.block_size:
            raise ValueError(
                "RAW_DISK_CACHE__TOTAL_SIZE must be a multiple of RAW_DISK_CACHE__BLOCK_SIZE"
            )
        return self

    @property
    def upstream_base_url(self) -> str:
        return upstream_url(self.upstream_address)


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def _valid_host(host: str) -> bool:
    """An IPv4/IPv6 literal or a DNS name (RFC 1123 labels; a trailing dot allowed)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in name.split("."))


def upstream_url(address: str) -> str:
    """Normalise ``host:port`` or ``http[s]://host[:port]`` to ``scheme://host:port``.

    A bare address must carry its port (``origin:80``): a forgotten port is a typo more
    often than a wish for 80. With a scheme the port defaults to the scheme's.
    """
    text = address.strip()
    bare = "://" not in text
    if bare:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ValueError("scheme must be http or https")
    if not parts.hostname:
        raise ValueError("must name a host, as host:port or http[s]://host:port")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user@host)")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must not carry a path, query or fragment")
    if not _valid_host(parts.hostname):
        raise ValueError(f"{parts.hostname!r} is not a host name or IP address")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("port must be a number from 1 to 65535")
    # An IPv6 literal keeps its brackets when written back (also in the hint below).
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None and bare:
        raise ValueError(f"must carry a port, e.g. {host}:80")
    # The port is always written: cache keys and invalidation compare origins exactly.
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


def known_variables(model: type[BaseModel] | None = None, prefix: str = ENV_PREFIX) -> list[str]:
    """Every environment variable the settings read (a nested model also as one JSON value)."""
    names = []
    for name, field in (model or Settings).model_fields.items():
        variable = prefix + name.upper()
        names.append(variable)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += known_variables(annotation, variable + NESTED_DELIMITER)
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``SLICECACHE_*`` variables no setting reads, each with the closest known name.

    pydantic-settings ignores them, so ``SLICECACHE_SLICESIZE=4m`` would silently leave the
    slice size at its default; like ``nginx -t`` on an unknown directive, refuse instead.
    """
    known = known_variables()
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        # Compared without the shared prefix, which would make every name look close.
        suffixes = [name.removeprefix(ENV_PREFIX) for name in known]
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        problems.append(f"unknown setting {variable}{hint}")
    return problems


def describe_error(error: ValidationError) -> str:
    """One line per broken rule, naming the environment variable as the operator typed it."""
    lines = []
    for item in error.errors():
        path = [str(part) for part in item["loc"] if isinstance(part, str)]
        variable = ENV_PREFIX + NESTED_DELIMITER.join(path).upper() if path else "SLICECACHE_*"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid setting {variable}: {message}")
    return "; ".join(lines)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment; on a broken rule print one clear line and exit with status 2."""
    unknown = unknown_variables(os.environ if environ is None else environ)
    if unknown:
        print(f"slicecache: {'; '.join(unknown)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return Settings()
    except ValidationError as error:
        print(f"slicecache: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as error:  # e.g. malformed JSON in a nested or list variable
        print(f"slicecache: {describe_parse_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_parse_error(error: ValueError) -> str:
    """pydantic-settings names the field, not the variable, of a value it cannot parse."""
    found = re.search(r'for field "(\w+)"', str(error))
    if found is None:
        return f"invalid setting: {error}"
    cause = error.__cause__ or error.__context__
    detail = f": {cause}" if cause is not None else ""
    return f"invalid setting {ENV_PREFIX}{found.group(1).upper()}: not valid JSON{detail}"
