"""Go semantics the wire depends on: time formatting, durations, and JSON decode errors."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sollol_proxy.wire.jsonscan import TooDeep, members

FOREVER = math.inf  # keep_alive < 0 means MaxInt64 ns in Go (§5.3)
_MAX_INT64_NS = 2**63 - 1


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with the given status and content type."""

    def __init__(self, status: int, message: str, content_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type  # None: gin c.JSON default (with charset)


# ---------------------------------------------------------------- times (§1.3)


def _frac(ns: int) -> str:
    # Go's RFC3339Nano trims trailing zeros and drops the dot entirely for whole seconds.
    return ("." + f"{ns:09d}".rstrip("0")) if ns else ""


def format_utc(epoch_ns: int) -> str:
    """``time.Now().UTC()`` as Go marshals it, e.g. 2025-10-26T17:21:21.196249Z."""
    secs, ns = divmod(epoch_ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + _frac(ns) + "Z"


def format_local(epoch_ns: int) -> str:
    """Server-local time with offset (modified_at, expires_at); Z when local time is UTC."""
    secs, ns = divmod(epoch_ns, 1_000_000_000)
    base = datetime.fromtimestamp(0, UTC).astimezone()
    try:
        dt = datetime.fromtimestamp(secs).astimezone()
    except (OverflowError, OSError, ValueError):
        # Far future (keep_alive forever): the platform cannot localise it, reuse today's offset.
        dt = (datetime.fromtimestamp(0, UTC) + timedelta(seconds=secs)).astimezone(base.tzinfo)
    off = dt.utcoffset() or timedelta(0)
    if off == timedelta(0):
        tz = "Z"
    else:
        minutes = int(off.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        tz = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + _frac(ns) + tz


def now_ns() -> int:
    return time.time_ns()


def expiry_ns(now: int, duration_s: float) -> int:
    if duration_s == FOREVER:
        return now + _MAX_INT64_NS
    return now + int(duration_s * 1e9)


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_go_time(text: str) -> int:
    """Epoch ns of an RFC 3339 timestamp (used to sort by modified_at); 0 when unparsable."""
    m = _TIME_RE.match(text)
    if not m:
        return 0
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    dt = datetime.fromisoformat(m.group(1) + tz)
    return int(dt.timestamp()) * 1_000_000_000 + int((m.group(2) or "0").ljust(9, "0"))


# ---------------------------------------------------------------- durations (§5.3)

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)?")


def go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def parse_go_duration(text: str) -> float:
    """``time.ParseDuration`` in seconds, raising ValueError with Go's message."""
    orig = text
    sign = 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    total, pos = 0.0, 0
    while pos < len(text):
        m = _DUR_RE.match(text, pos)
        if not m:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        if m.group(2) is None:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def go_type_name(value: Any) -> str:
    """reflect.TypeOf of a value decoded into interface{} (for 'Unsupported type' errors)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "float64" if isinstance(value, int | float) else "string"


def parse_keep_alive(value: Any) -> float | None:
    """api.Duration.UnmarshalJSON: seconds, or a Go duration; negative means forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(400, f"Unsupported type: '{go_type_name(value)}'")
    if isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    else:
        seconds = float(value)
    return FOREVER if seconds < 0 else seconds


# ---------------------------------------------------------------- JSON bodies (§1.7)


_GO_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _quote_char(c: str) -> str:
    """encoding/json quoteChar: the offending *byte* b, as strconv.Quote(string(rune(b)))
    prints it ('\\x1f' for a gzip body's first byte, '\\u008b', 'Ã' for a UTF-8 lead byte).
    ``c`` comes from a surrogateescape decode, so a lone surrogate stands for a raw byte."""
    b = ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else c.encode()[0]
    if b == ord("'"):
        return "'\\''"
    if b == ord('"'):
        return "'\"'"
    if b == ord("\\"):
        return "'\\\\'"
    if b in _GO_ESCAPES:
        return "'" + _GO_ESCAPES[b] + "'"
    if b < 0x20 or b == 0x7F:
        return f"'\\x{b:02x}'"
    return f"'{chr(b)}'" if chr(b).isprintable() else f"'\\u{b:04x}'"


def _innermost(prefix: str) -> str:
    """The innermost open container ('{' or '[') at the end of prefix, skipping strings."""
    stack: list[str] = []
    in_str = esc = False
    for ch in prefix:
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


_KINDS = {str: "string", bool: "bool", dict: "object", list: "array"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), "number")


def _expected_kind(go_type: str) -> str:
    if go_type in ("string", "bool"):
        return go_type
    if go_type.startswith("[]"):
        return "array"
    return "object" if go_type.startswith(("map[", "api.")) else "number"


def _syntax_error(raw: bytes) -> str:
    """encoding/json's syntax error text. Parsed again from a surrogateescape decode, so the
    offending character maps back to the byte Go's scanner stopped at."""
    stripped = raw.decode("utf-8", "surrogateescape").lstrip(" \t\r\n")
    try:
        json.JSONDecoder().raw_decode(stripped)
        return "unexpected EOF"  # not reached: the replace-decoded text failed the same way
    except json.JSONDecodeError as exc:
        if exc.pos >= len(stripped) or exc.msg.startswith("Unterminated string"):
            return "unexpected EOF"
        c = _quote_char(stripped[exc.pos])
        if exc.msg.startswith("Expecting property name"):
            where = "looking for beginning of object key string"
        elif exc.msg.startswith("Expecting ':'"):
            where = "after object key"
        elif exc.msg.startswith("Expecting ','"):
            inner = _innermost(stripped[: exc.pos])
            where = "after object key:value pair" if inner == "{" else "after array element"
        else:
            where = "looking for beginning of value"
        return f"invalid character {c} {where}"


def _deep_object(raw: bytes) -> dict[str, Any]:
    """A body nested deeper than Python's parser goes: Go's error beyond its depth, else its
    members, a deep one left out (in an unknown field Go ignores it too)."""
    try:
        found = members(raw, 10**9)
    except TooDeep as exc:
        raise ApiError(400, str(exc)) from None
    if found is None:
        raise ApiError(400, "unexpected EOF")
    value: dict[str, Any] = {}
    for member in found:
        try:
            value[member.key] = json.loads(raw[member.start : member.end])
        except (RecursionError, ValueError):
            value.pop(member.key, None)
    return value


def decode_body(raw: bytes, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    """Decode like gin's ShouldBindJSON into Go struct ``struct``: the first JSON value only,
    unknown fields ignored, Go's error text. ``fields`` maps a JSON field to its Go type, for
    the type-mismatch message."""
    text = raw.decode("utf-8", "replace")
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise ApiError(400, "missing request body")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError:
        raise ApiError(400, _syntax_error(raw)) from None
    except RecursionError:  # Python's parser recurses; Go reads up to 10000 levels
        value = _deep_object(raw)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {_kind(value)} into Go value of type api.{struct}"
        )
    for name, go_type in fields.items():
        got = value.get(name)
        if got is not None and _kind(got) != _expected_kind(go_type):
            raise ApiError(
                400,
                f"json: cannot unmarshal {_kind(got)} into Go struct field "
                f"{struct}.{name} of type {go_type}",
            )
    return value


def int_option(options: dict[str, Any], name: str) -> int | None:
    """api.Options.FromMap for an integer option: 500 on a wrong type (§3.19)."""
    if name not in options or options[name] is None:
        return None
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(500, f'option "{name}" must be of type integer')
    return int(value)
