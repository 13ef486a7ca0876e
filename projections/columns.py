"""Values as view columns can hold them: PostgreSQL text and jsonb refuse NUL characters."""

from __future__ import annotations

from typing import Any, Final

import msgspec

_encode: Final = msgspec.json.Encoder(decimal_format="number").encode
_NUL: Final = "\x00"
_REPLACEMENT: Final = "\ufffd"


def text(value: object) -> str | None:
    """A scalar as text (strings as they are, numbers written out); anything else is None."""
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def json_text(value: Any) -> str:
    """JSON for a jsonb column; NUL characters inside strings become U+FFFD."""
    encoded = _encode(value)
    if b"\\u0000" in encoded:
        encoded = _encode(_without_nul(value))
    return encoded.decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
