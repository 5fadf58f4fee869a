"""Every knob of slicecache, read from the environment (prefix ``SLICECACHE_``, nesting ``__``).

The names follow the prototype's configuration keys so its users find them. A value that
breaks a rule stops the process at startup with one line naming the variable and the rule
(see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

ENV_PREFIX = "SLICECACHE_"
NESTED_DELIMITER = "__"


class RawDiskCacheSettings(BaseModel):
    """The L2 device: one preallocated file (or block device) used as a raw block store."""

    device_path: str = Field(
        default="/var/cache/slicecache/l2.bin",
        description="File (created and preallocated) or block device holding the L2 store.",
    )
    total_size: int = Field(
        default=1 * GiB, ge=16 * MiB, description="Size of the device in bytes."
    )
    block_size: int = Field(
        default=4 * KiB,
        ge=512,
        le=1 * MiB,
        description="Allocation unit in bytes: a power of two from 512 B to 1 MiB.",
    )
    use_direct_io: bool = Field(
        default=False, description="Open the device with O_DIRECT (page cache bypassed)."
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
        default=30.0, gt=0, le=3600, description="Seconds the origin may stay silent mid-response."
    )
    total_timeout: float = Field(
        default=0.0,
        ge=0,
        description="Seconds one upstream exchange may take in all, body included; 0 = no limit.",
    )
    upstream_pool_size: int = Field(
        default=100, ge=1, le=10000, description="Most connections open to the origin at once."
    )

    # --- slicing ---------------------------------------------------------------------------
    slice_size: int = Field(
        default=1 * MiB,
        ge=64 * KiB,
        le=64 * MiB,
        description="Bytes per slice, from 64 KiB to 64 MiB.",
    )
    max_concurrent_subrequests: int = Field(
        default=4, ge=1, le=64, description="Slices fetched ahead of one client at once."
    )
    slices_per_subrequest: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Consecutive missing slices one Range request fetches (the origin's "
        "first-byte latency is paid once per request); the lookahead is "
        "MAX_CONCURRENT_SUBREQUESTS such requests.",
    )
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a slice fetch on connect errors, 5xx."
    )
    slice_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Regexes (JSON list or comma-separated) of paths to slice; empty = all.",
    )
    max_in_flight_bytes: int = Field(
        default=256 * MiB,
        ge=1 * MiB,
        description="Global cap on bytes of slices being fetched from the origin at once.",
    )

    # --- caching ---------------------------------------------------------------------------
    enable_cache: bool = Field(default=True, description="Cache anything at all.")
    cache_ttl: int = Field(
        default=3600,
        ge=0,
        description="Seconds an object is fresh when the origin says nothing about freshness.",
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
    l1_cache_size_bytes: int = Field(
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
    max_request_target_bytes: int = Field(
        default=8192, ge=256, le=1_048_576, description="Longest request target (else 414)."
    )
    max_header_bytes: int = Field(
        default=65536, ge=1024, le=16_777_216, description="Most request header bytes (else 431)."
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @field_validator("upstream_address")
    @classmethod
    def _valid_upstream(cls, value: str) -> str:
        upstream_url(value)
        return value

    @field_validator("slice_patterns", "admin_allow_networks", mode="before")
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

    @field_validator("admin_allow_networks")
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


def upstream_url(address: str) -> str:
    """Normalise ``host:port`` or ``http[s]://host:port`` to ``scheme://host:port``."""
    text = address.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ValueError("scheme must be http or https")
    if not parts.hostname:
        raise ValueError("must name a host, as host:port or http[s]://host:port")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must not carry a path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number from 1 to 65535") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    # The port is always written: cache keys and invalidation compare origins exactly.
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


def describe_error(error: ValidationError) -> str:
    """One line per broken rule, naming the environment variable as the operator typed it."""
    lines = []
    for item in error.errors():
        path = [str(part) for part in item["loc"] if isinstance(part, str)]
        variable = ENV_PREFIX + NESTED_DELIMITER.join(path).upper() if path else "SLICECACHE_*"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid setting {variable}: {message}")
    return "; ".join(lines)


def load_settings() -> Settings:
    """Read the environment; on a broken rule print one clear line and exit with status 2."""
    try:
        return Settings()
    except ValidationError as error:
        print(f"slicecache: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as error:  # e.g. malformed JSON in a list variable
        print(f"slicecache: invalid setting: {error}", file=sys.stderr)
        raise SystemExit(2) from None
