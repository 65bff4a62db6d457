"""What a Coinbase capture is told and what it reports: options, the API key, summaries.

Kept apart from the capture loop (:mod:`ledger.venues.coinbase.capture`) so that the CLI
and ``ledger run`` can build options without loading aiohttp.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ledger.errors import ConfigError
from ledger.venues.coinbase.auth import sign_request
from ledger.venues.coinbase.codec import MessageError
from ledger.venues.coinbase.sync import SyncTiming

__all__ = [
    "REST_URL",
    "WS_URL",
    "ApiCredentials",
    "CaptureSummary",
    "CoinbaseOptions",
    "Lags",
    "ProductSummary",
    "check_url",
    "stream_name",
]

WS_URL = "wss://ws-feed.exchange.coinbase.com"
REST_URL = "https://api.exchange.coinbase.com"
_CREDENTIAL_VARIABLES = ("LEDGER_COINBASE_KEY", "LEDGER_COINBASE_SECRET", "LEDGER_COINBASE_PASSPHRASE")


def stream_name(product: str) -> str:
    return f"coinbase:{product}"


@dataclass(frozen=True)
class ApiCredentials:
    """A Coinbase Exchange API key; the secret and passphrase never appear in a repr or a log."""

    key: str
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiCredentials:
        env = os.environ if environ is None else environ
        missing = [name for name in _CREDENTIAL_VARIABLES if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the full and level3 "
                "channels need a Coinbase Exchange API key (key, base64 secret, passphrase) in "
                + ", ".join(_CREDENTIAL_VARIABLES)
            )
        key, secret, passphrase = (env[name].strip() for name in _CREDENTIAL_VARIABLES)
        try:
            sign_request(secret, "0", "GET", "/")
        except MessageError:
            raise ConfigError("LEDGER_COINBASE_SECRET is not valid base64 (its value is not shown)") from None
        return cls(key, secret, passphrase)


@dataclass(frozen=True)
class CoinbaseOptions:
    products: tuple[str, ...]
    channel: str = "full"  # or "level3"
    ws_url: str = WS_URL
    rest_url: str = REST_URL
    duration: float | None = None  # seconds, then stop
    max_messages: int | None = None  # feed messages, then stop
    idle_timeout: float = 10.0  # no frame for this long: the connection is dead
    rest_timeout: float = 10.0
    rest_retries: int = 4
    reconnect_base: float = 0.5
    reconnect_cap: float = 30.0
    db_retry_for: float = 300.0
    max_pending: int = 50_000  # messages received and not yet committed before the reader waits
    summary_every: float = 60.0
    timing: SyncTiming = field(default_factory=SyncTiming)

    def __post_init__(self) -> None:
        check_url(self.ws_url, "--ws-url", secure=("wss", "https"), plain=("ws", "http"))
        check_url(self.rest_url, "--rest-url", secure=("https",), plain=("http",))


def check_url(url: str, option: str, *, secure: tuple[str, ...], plain: tuple[str, ...]) -> None:
    """Refuse a URL the capture's API key must not be sent to (a ConfigError naming ``option``).

    Rule: the subscription and every REST call carry the key, the passphrase and a
    signature, so they go over TLS (a ``secure`` scheme) only; plain text (a ``plain``
    scheme) is allowed to a loopback host alone (127.0.0.0/8, ::1, localhost), such as a
    local test exchange. The message shows the scheme and host only, never a user or
    password the URL may hold.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as e:
        raise ConfigError(f"{option}: not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    shown = f"[{host}]" if ":" in host else host
    where = f"{scheme}://{shown}" + (f":{port}" if port is not None else "") if host else repr(scheme + ":")
    if scheme not in secure + plain or not host:
        raise ConfigError(f"{option}: {where} is not a {secure[0]}:// URL with a host")
    if scheme in plain and not _loopback(host):
        raise ConfigError(
            f"{option} {where} is plain text ({scheme}://): the API key and passphrase would be sent "
            f"unencrypted to {host}. Use {secure[0]}://; {scheme}:// is allowed only to this machine "
            "(127.0.0.1, ::1, localhost)"
        )


def _loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass
class ProductSummary:
    product: str
    stream: str
    messages: int = 0
    events_stored: int = 0
    duplicates: int = 0
    dropped_before_start: int = 0
    gaps: int = 0  # gap rows this run created: what `ledger gaps STREAM --all` lists for it
    late: int = 0  # messages that came after a later one and filled its jump: reordered, not lost
    resyncs: int = 0
    stale_books: int = 0
    rejects: int = 0
    open_gaps: int = 0
    awaiting_book: int = 0  # messages of a new stream still waiting for its first book (not stored)
    state: str = ""
    lag_ms_p50: float | None = None
    lag_ms_p99: float | None = None


@dataclass
class CaptureSummary:
    products: list[ProductSummary]
    frames: int = 0
    connections: int = 0
    reconnects: int = 0
    heartbeats: int = 0
    control_messages: int = 0  # subscriptions, errors, status and other messages without a sequence
    rejects: int = 0
    db_retries: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    lag_ms_p50: float | None = None  # receipt to commit, all products
    lag_ms_p99: float | None = None

    @property
    def messages_per_second(self) -> float:
        return sum(p.messages for p in self.products) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "products": [vars(p) for p in self.products],
            "frames": self.frames,
            "connections": self.connections,
            "reconnects": self.reconnects,
            "heartbeats": self.heartbeats,
            "control_messages": self.control_messages,
            "rejects": self.rejects,
            "db_retries": self.db_retries,
            "lag_ms_p50": self.lag_ms_p50,
            "lag_ms_p99": self.lag_ms_p99,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
            "stopped_by": self.stopped_by,
        }


class Lags:
    """Receipt-to-commit lag samples (seconds), a bounded uniform sample of them."""

    def __init__(self, keep: int = 50_000) -> None:
        self.samples: list[float] = []
        self.seen = 0
        self._keep = keep
        self._rng = random.Random(0)

    def add(self, values: list[float]) -> None:
        for value in values:
            self.seen += 1
            if len(self.samples) < self._keep:
                self.samples.append(value)
            elif (i := self._rng.randrange(self.seen)) < self._keep:
                self.samples[i] = value

    def percentile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
