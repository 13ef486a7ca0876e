"""Personal data: `rollcall erase` (GDPR Art. 17) and `rollcall subject find|export` (Art. 15)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Final

import msgspec

from service import privacy
from service.cli import Commands
from service.cli.database import database
from service.config import Settings
from service.eventstore import keys
from service.eventstore.store import DeliveryStore

_encoder: Final = msgspec.json.Encoder(decimal_format="number")
_MAX_TEXT: Final = 200


def add_commands(commands: Commands) -> None:
    """Register erase and subject."""
    erase = commands.add_parser(
        "erase", help="erase an attendee's personal data for good (destroys their data key)"
    )
    erase.add_argument("--event", required=True, help="the JTE event's slug")
    erase.add_argument("--attendee", required=True, help="the attendee id")
    erase.add_argument(
        "--by", help="who asks (recorded with the erasure; default: the operator's login)"
    )
    erase.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the live views (default 10)"
    )
    erase.add_argument(
        "--lift",
        action="store_true",
        help="lift the block an earlier erasure left: keep what JTE sends about them again",
    )
    erase.set_defaults(run=run_erase)

    subject = commands.add_parser("subject", help="find or export a person's data by email")
    actions = subject.add_subparsers(required=True, metavar="ACTION")
    for name, run, text in (
        ("find", run_find, "list the (event, attendee id) pairs that carry this email"),
        ("export", run_export, "write everything held about this email as JSON"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--email", required=True, help="the email address, any case")
        action.set_defaults(run=run)


def _checked(value: str, what: str) -> str | None:
    if not value.strip() or len(value) > _MAX_TEXT or "\x00" in value:
        print(f"rollcall: {what} must be 1 to {_MAX_TEXT} characters", file=sys.stderr)
        return None
    return value


def run_erase(settings: Settings, args: argparse.Namespace) -> int:
    slug, attendee = _checked(args.event, "--event"), _checked(args.attendee, "--attendee")
    if slug is None or attendee is None:
        return 2
    if settings.event(slug) is None:
        print(f"rollcall: no JTE event {slug[:64]!r} is configured", file=sys.stderr)
        return 2
    by = args.by or f"cli:{getpass.getuser()}"
    keyring = keys.activate(keys.keyring_for(settings.data_dir, settings.master_key))
    if args.lift:
        with database(settings, "erase") as url:
            print(_encoder.encode(privacy.lift(url, slug, attendee)).decode())
        return 0
    with database(settings, "erase") as url:
        store = DeliveryStore(url, pool_size=1, keyring=keyring)
        try:
            receipt = privacy.erase(store, url, slug, attendee, by[:_MAX_TEXT], args.wait)
        finally:
            store.close()
    print(_encoder.encode(receipt).decode())
    if not receipt.views_caught_up:
        print(
            "rollcall: the erasure is recorded and the roster scrubbed; the other views fold "
            "it once the projections run (rollcall serve)",
            file=sys.stderr,
        )
    return 0


def run_find(settings: Settings, args: argparse.Namespace) -> int:
    email = _checked(args.email, "--email")
    if email is None:
        return 2
    keyring = keys.activate(keys.keyring_for(settings.data_dir, settings.master_key))
    with database(settings, "subject") as url:
        found = privacy.find(url, keyring, email)
    print(_encoder.encode(privacy.Subjects(email_found=bool(found), subjects=found)).decode())
    return 0


def run_export(settings: Settings, args: argparse.Namespace) -> int:
    email = _checked(args.email, "--email")
    if email is None:
        return 2
    keyring = keys.activate(keys.keyring_for(settings.data_dir, settings.master_key))
    with database(settings, "subject") as url:
        exported = privacy.export(url, keyring, email)
    print(_encoder.encode(exported).decode())
    return 0
