"""Signing for Coinbase Exchange: the websocket subscribe request and REST request headers.

Pure: the caller passes the clock. Never log what these return: the subscribe request holds
the key and passphrase; the secret itself never leaves :func:`sign_request`, and no error
shows any of the three.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ledger.venues.coinbase.codec import _PRODUCT, _TIMESTAMP, MessageError, _show

__all__ = ["sign_request", "subscribe_message"]

_VERIFY_PATH: Final = "/users/self/verify"  # the request path the websocket signature covers


def subscribe_message(
    product_ids: Sequence[str],
    channels: Sequence[str | Mapping[str, Any]],
    key: str,
    secret: str,
    passphrase: str,
    timestamp: str | int,
) -> dict[str, Any]:
    """The signed subscribe request for Coinbase Exchange's websocket feed.

    ``signature`` is base64(HMAC-SHA256(base64-decoded ``secret``, ``timestamp + "GET" +
    "/users/self/verify"``)); ``timestamp`` is Unix seconds (the caller's clock, so this
    stays pure). The message holds ``key`` and ``passphrase``, never the secret; errors
    never show any of the three.
    """
    if isinstance(product_ids, str) or not product_ids:
        raise MessageError("product_ids must be a non-empty list of product ids", field="product_ids")
    for product in product_ids:
        if type(product) is not str or _PRODUCT(product) is None:
            raise MessageError(f"product_ids: {_show(product)} is not a product id", field="product_ids")
    if isinstance(channels, str) or not channels:
        raise MessageError("channels must be a non-empty list of channel names or objects", field="channels")
    wanted: list[str | dict[str, Any]] = []
    for channel in channels:
        if isinstance(channel, str):
            wanted.append(channel)
        elif isinstance(channel, Mapping) and isinstance(channel.get("name"), str):
            wanted.append(dict(channel))
        else:
            raise MessageError(f"channels: {_show(channel)} is neither a name nor a {{'name': ...}} object")
    if type(timestamp) is int and timestamp >= 0:
        stamp = str(timestamp)
    elif type(timestamp) is str and _TIMESTAMP(timestamp) is not None:
        stamp = timestamp
    else:
        raise MessageError(f"timestamp must be Unix seconds, not {_show(timestamp)}", field="timestamp")
    for name, value in (("key", key), ("secret", secret), ("passphrase", passphrase)):
        if type(value) is not str or not value:
            raise MessageError(f"the API {name} must be a non-empty string (its value is not shown)", field=name)
    return {
        "type": "subscribe",
        "product_ids": list(product_ids),
        "channels": wanted,
        "signature": sign_request(secret, stamp, "GET", _VERIFY_PATH),
        "key": key,
        "passphrase": passphrase,
        "timestamp": stamp,
    }


def sign_request(secret: str, timestamp: str, method: str, request_path: str, body: str = "") -> str:
    """Coinbase Exchange's request signature: base64(HMAC-SHA256(base64-decoded ``secret``,
    ``timestamp + method + request_path + body``)), for the websocket subscribe (``GET
    /users/self/verify``) and for REST calls (the ``CB-ACCESS-SIGN`` header)."""
    try:
        secret_bytes = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("the API secret is not valid base64 (its value is not shown)", field="secret") from None
    message = (timestamp + method.upper() + request_path + body).encode("utf-8")
    return base64.b64encode(hmac.new(secret_bytes, message, hashlib.sha256).digest()).decode("ascii")
