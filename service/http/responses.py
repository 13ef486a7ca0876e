"""HTTP helpers shared by the routes: JSON answers encoded with msgspec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
from starlette.responses import Response

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
