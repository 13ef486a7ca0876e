"""The payment ledger: one entry per payment reference, exact decimals with their currency.

Only AttendeePaymentConfirmed makes entries; nothing removes them (JTE has no refund event, and
a deletion is not a refund). A confirmation sent again for the same reference is the same entry:
the later one (by event order) wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgspec

from domain.events import PAYMENT_CONFIRMED, AttendeeEvent

# JTE's payment settings name these gateways (0 is "disabled" there; bank transfer has no code).
_METHODS: Final = {
    "payu": "payu",
    "1": "payu",
    "przelewy24": "przelewy24",
    "p24": "przelewy24",
    "2": "przelewy24",
    "tpay": "tpay",
    "3": "tpay",
    "bank_transfer": "bank_transfer",
    "banktransfer": "bank_transfer",
    "bank transfer": "bank_transfer",
    "transfer": "bank_transfer",
    "przelew": "bank_transfer",
}
_CURRENCY: Final = re.compile(r"^[A-Za-z]{3}$")
_MAX_AMOUNT: Final = Decimal("1e12")
# Six decimal places and twelve integer digits keep every sum exact in the default 28-digit
# decimal context (and no currency has more than three).
_MAX_PLACES: Final = 6


class PaymentError(ValueError):
    """A payment confirmation the ledger cannot record; the message says what is wrong."""


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One confirmed payment."""

    slug: str
    entry_key: str  # the payment reference, or the delivery key when there is none
    attendee_id: str
    amount: Decimal
    currency: str
    method: str
    reference: str | None
    paid_at: datetime
    order: str
    position: int


def ledger_entry(event: AttendeeEvent) -> LedgerEntry:
    """The entry a confirmation makes; PaymentError if it lacks a usable amount or currency."""
    if event.event_type != PAYMENT_CONFIRMED:
        raise PaymentError(f"{event.event_type} is not a payment confirmation")
    payment = payment_fields(event.attendee)
    amount = _amount(payment.get("amount"))
    currency = _currency(payment.get("currency"))
    reference = _text(payment.get("reference"))
    return LedgerEntry(
        slug=event.slug,
        entry_key=f"ref:{reference}" if reference else f"delivery:{event.key}",
        attendee_id=event.attendee_id,
        amount=amount,
        currency=currency,
        method=method_name(payment.get("method")),
        reference=reference,
        paid_at=event.at,
        order=event.order,
        position=event.position,
    )


def payment_fields(attendee: dict[str, Any]) -> dict[str, Any]:
    """amount, currency, method, reference from `attendee.payment`, or the attendee itself."""
    source = attendee.get("payment")
    if not isinstance(source, dict):
        source = attendee
    return {
        "amount": _first(source, ("amount", "total", "paidAmount")),
        "currency": source.get("currency"),
        "method": _first(source, ("method", "gateway", "paymentMethod", "paymentSystem")),
        "reference": _first(source, ("reference", "transactionId", "paymentReference")),
    }


def method_name(value: object) -> str:
    """A gateway name from JTE's spellings; unknown ones are kept, lowercased."""
    if value is None or isinstance(value, bool):
        return "unknown"
    text = str(value).strip().lower()
    return _METHODS.get(text, text.replace(" ", "_") or "unknown")


def merge(entries: Iterable[LedgerEntry]) -> dict[tuple[str, str], LedgerEntry]:
    """The ledger: per (event, entry key), the latest confirmation."""
    ledger: dict[tuple[str, str], LedgerEntry] = {}
    for entry in entries:
        key = (entry.slug, entry.entry_key)
        current = ledger.get(key)
        if current is None or entry.order > current.order:
            ledger[key] = entry
    return ledger


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise PaymentError("no payment amount")
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, str) else Decimal(value)  # type: ignore[arg-type]
    except (InvalidOperation, TypeError, ValueError):
        raise PaymentError(f"payment amount is not a decimal: {str(value)[:40]!r}") from None
    if not amount.is_finite() or amount < 0 or amount >= _MAX_AMOUNT:
        raise PaymentError(f"payment amount out of range: {amount}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_PLACES:
        raise PaymentError(f"payment amount has more than {_MAX_PLACES} decimal places: {amount}")
    return amount


def _currency(value: object) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value.strip()):
        raise PaymentError(f"payment currency is not a 3-letter code: {str(value)[:20]!r}")
    return value.strip().upper()


def _text(value: object) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).strip()
        return text[:200] or None
    return None


def _first(source: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if source.get(key) is not None:
            return source[key]
    return None
