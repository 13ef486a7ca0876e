"""Values as view columns can hold them and PostgreSQL can always read back: text and jsonb
refuse NUL characters, and jsonb's numeric refuses (or prints at length) numbers such as
1e200000."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

import msgspec

_encode: Final = msgspec.json.Encoder(decimal_format="number").encode
_NUL: Final = "\x00"
_REPLACEMENT: Final = "\ufffd"
# A number keeps its JSON number form within these bounds: PostgreSQL's numeric holds up to
# 131,072 digits before the point and 16,383 after, but printing 1e100000 back takes 100 kB.
MAX_EXPONENT: Final = 999  # powers of ten from 1e-999 to 9.99e999
MAX_DIGITS: Final = 1000  # significant digits
# In the encoded JSON, a long run of digits or a four-digit exponent: a number that may be
# outside those bounds (or a string that looks like one: then the careful path finds nothing).
# Two patterns, not one alternation: the exponent's literal start lets the regex engine skip
# ahead, and the run needs looking for only in a long text (0.7 µs a row against 4.5 µs).
_LONG_RUN: Final = re.compile(rb"[0-9.]{%d}" % (MAX_DIGITS + 1))
_LONG_EXPONENT: Final = re.compile(rb"E[+-][0-9]{4}")


def text(value: object) -> str | None:
    """A scalar as text (strings as they are, numbers written out); anything else is None."""
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def json_text(value: Any) -> str:
    """JSON that a jsonb cast always reads: NUL characters inside strings become U+FFFD, and a
    number beyond MAX_EXPONENT or MAX_DIGITS becomes a string of its exact value ("1E+200000")."""
    return json_text_exact(value)[0]


def json_text_exact(value: Any) -> tuple[str, bool]:
    """`json_text`, and whether it is the value's own JSON (nothing had to be replaced), so
    that decoding it gives the value back."""
    encoded = _encode(value)
    if b"\\u0000" in encoded or _suspect(encoded):
        return _encode(_storable(value)).decode(), False
    return encoded.decode(), True


def _suspect(encoded: bytes) -> bool:
    if _LONG_EXPONENT.search(encoded) is not None:
        return True
    return len(encoded) > MAX_DIGITS and _LONG_RUN.search(encoded) is not None


def storable_number(number: Decimal) -> bool:
    """Whether a JSON number stays a number in a jsonb column (see MAX_EXPONENT, MAX_DIGITS)."""
    return (
        number.is_finite()
        and abs(number.adjusted()) <= MAX_EXPONENT
        and len(number.as_tuple().digits) <= MAX_DIGITS
    )


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, Decimal):
        return value if storable_number(value) else str(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value
