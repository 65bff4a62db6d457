"""The test exchange's API keys, and a client's signed subscribe message.

Written apart from ledger's own signing (:mod:`ledger.venues.coinbase.auth`) so that the
local exchange checks ledger's signatures against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["VERIFY_PATH", "Credentials", "sign", "subscribe_message"]

#: The request path the websocket signature covers.
VERIFY_PATH: Final = "/users/self/verify"


def sign(secret: str, timestamp: str, method: str = "GET", request_path: str = VERIFY_PATH, body: str = "") -> str:
    """Coinbase Exchange's signature: base64(HMAC-SHA256(b64decode(secret), ts + method + path + body))."""
    digest = hmac.new(base64.b64decode(secret), (timestamp + method + request_path + body).encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key as Coinbase hands it out: key, base64 secret, passphrase (never in a repr)."""

    key: str
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)

    @classmethod
    def generate(cls, rng: random.Random) -> Credentials:
        key = f"{rng.getrandbits(128):032x}"
        secret = base64.b64encode(rng.randbytes(64)).decode()
        passphrase = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(11))
        return cls(key, secret, passphrase)


def subscribe_message(
    product_ids: Sequence[str],
    channels: Sequence[str | dict[str, Any]],
    credentials: Credentials | None = None,
    *,
    timestamp: str | None = None,
    kind: str = "subscribe",
) -> dict[str, Any]:
    """A subscribe (or unsubscribe) message, signed when ``credentials`` are given."""
    message: dict[str, Any] = {"type": kind, "product_ids": list(product_ids), "channels": list(channels)}
    if credentials is not None:
        stamp = timestamp if timestamp is not None else str(int(time.time()))
        message |= {
            "signature": sign(credentials.secret, stamp),
            "key": credentials.key,
            "passphrase": credentials.passphrase,
            "timestamp": stamp,
        }
    return message
