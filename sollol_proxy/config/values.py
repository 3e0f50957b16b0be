"""The value types of the configuration (durations, sizes, integers, booleans, maps, headers),
each parsed with an error that names where the value came from, the key and the problem."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sollol_proxy.config.layers import Layers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Beyond any real memory or rate, and below what the C parsers and socket options the sizes go
# to can hold (10**30 header bytes broke aiohttp's parser: every request was disconnected).
MAX_SIZE = 2**50


def seconds(layers: Layers, key: str, default: float, most: float = math.inf) -> float:
    """A duration; `most` bounds it where what it is given to has a limit of its own."""
    value = layers.values.get(key, default)
    if isinstance(value, bool):
        raise layers.error(key, f"expected seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise layers.error(
                key, f"expected seconds or a duration like '30s', '5m', got {value!r}"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    # inf and nan (YAML's .inf, .nan, or digits beyond a float) overflowed where a duration
    # becomes an integer, at start-up once the port was bound.
    if not math.isfinite(seconds):
        raise layers.error(key, f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise layers.error(key, f"must be greater than zero, got {value!r}")
    if seconds > most:
        raise layers.error(key, f"must be at most {most:g}s, got {value!r}")
    return seconds


def integer(layers: Layers, key: str, default: int, low: int, high: int, value: Any = None) -> int:
    value = layers.values.get(key, default) if value is None else value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise layers.error(key, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def size(layers: Layers, key: str, default: int, value: Any = None) -> int:
    value = layers.values.get(key, default) if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise layers.error(key, f"expected a byte size like 67108864 or '64MiB', got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if size < 1024:
        raise layers.error(key, f"must be at least 1024 bytes, got {value!r}")
    if size > MAX_SIZE:
        raise layers.error(key, f"must be at most {MAX_SIZE} bytes (1048576GiB), got {value!r}")
    return size


def absent_as(layers: Layers, key: str, empty: Any) -> Any:
    """The value of `key`, `empty` when not set (or set to nothing, YAML's `key:`). A wrong type
    that happens to be falsy (`0`, `''`, `{}` for a list) stays, to be refused as wrong."""
    value = layers.values.get(key)
    return empty if value is None else value


def boolean(layers: Layers, key: str, default: bool) -> bool:
    value = layers.values.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise layers.error(key, f"expected true or false, got {value!r}")


def string_map(layers: Layers, key: str, value: Any) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise layers.error(key, "must be a mapping of names to strings")
    for name, text in value.items():
        # `Authorization:` with its value forgotten is None: it was sent as "None".
        if not isinstance(text, str | int | float):
            raise layers.error(f"{key}.{name}", f"expected a string, got {text!r}")
    return MappingProxyType({k: str(v) for k, v in value.items()})


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


def headers(layers: Layers, key: str, value: Any) -> Mapping[str, str]:
    headers = string_map(layers, key, value)
    for name, text in headers.items():
        if not _HEADER_NAME.match(name):
            raise layers.error(f"{key}.{name}", "is not a valid header name")
        if any(c in text for c in "\r\n\0"):
            raise layers.error(f"{key}.{name}", "must not contain line breaks or NUL")
    return headers
