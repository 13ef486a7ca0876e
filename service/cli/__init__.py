"""The `rollcall` command line (service.cli.main is the entry point; each module adds its
commands to the parser)."""

from __future__ import annotations

import argparse
from typing import Any, Protocol


class Commands(Protocol):
    """What `add_subparsers()` gives: where each module adds its commands."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...
