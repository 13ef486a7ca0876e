"""What every route answers with: JSON encoded by msgspec, and the one shape of an error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
from starlette.responses import Response


class Error(msgspec.Struct, frozen=True):
    """Every error: a short code and a sentence for a person."""

    error: str
    message: str


# Decimals go out as JSON numbers only where a view asks; by default as exact strings.
_encoder: Final = msgspec.json.Encoder()


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response whose body is encoded by msgspec."""
    return Response(
        _encoder.encode(content),
        status_code=status_code,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )
