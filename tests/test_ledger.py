"""The payment ledger: one entry per payment reference (or per delivery), exact decimals, and
confirmations the ledger cannot record rejected as PaymentError (poison), never guessed at."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from domain.events import (
    CHECKED_IN,
    DELETED,
    PAYMENT_CONFIRMED,
    REGISTERED,
    AttendeeEvent,
)
from domain.ledger import (
    LedgerEntry,
    PaymentError,
    ledger_entry,
    merge,
    method_name,
    payment_fields,
)
from domain.roster import fold
from tests.events_factory import SLUG, at, delivered, ledger_entries, ledger_of, make_event, paying
from tests.reference import totals


def paid(
    when: datetime,
    amount: object = "349.00",
    currency: object = "PLN",
    method: object = "przelewy24",
    reference: object = None,
    attendee_id: str = "a-1",
) -> AttendeeEvent:
    return make_event(
        PAYMENT_CONFIRMED,
        attendee_id,
        when,
        fields=paying(amount, currency, method, reference),
    )


# --- Entries -------------------------------------------------------------------------------------


def test_a_confirmation_makes_an_entry_with_exact_amount_and_currency() -> None:
    event = paid(at(9, 12), "349.00", "PLN", "przelewy24", "P24-99812")
    entry = ledger_entry(event)
    assert entry == LedgerEntry(
        slug=SLUG,
        entry_key="ref:P24-99812",
        attendee_id="a-1",
        amount=Decimal("349.00"),
        currency="PLN",
        method="przelewy24",
        reference="P24-99812",
        paid_at=at(9, 12),
        order=event.order,
        position=event.position,
    )
    # Exact: the two decimal places survive, no float on the way.
    assert isinstance(entry.amount, Decimal)
    assert str(entry.amount) == "349.00"


def test_a_resend_with_the_same_reference_is_one_entry_and_the_later_one_wins() -> None:
    first = paid(at(9), "300.00", reference="PAYU-1")
    resend = paid(at(10), "349.00", reference="PAYU-1")
    for arrival in ([first, resend], [resend, first]):
        ledger = ledger_of(arrival)
        assert list(ledger) == [(SLUG, "ref:PAYU-1")]
        assert ledger[(SLUG, "ref:PAYU-1")].amount == Decimal("349.00")
        assert ledger[(SLUG, "ref:PAYU-1")].paid_at == at(10)


def test_different_references_are_different_entries() -> None:
    ledger = ledger_of([paid(at(9), reference="R-1"), paid(at(9), reference="R-2")])
    assert set(ledger) == {(SLUG, "ref:R-1"), (SLUG, "ref:R-2")}


def test_without_a_reference_each_delivery_is_its_own_entry() -> None:
    one = paid(at(9), "10.00")
    two = paid(at(9), "10.00")
    ledger = ledger_of([one, two, one])  # `one` delivered twice is still one delivery
    assert set(ledger) == {(SLUG, f"delivery:{one.key}"), (SLUG, f"delivery:{two.key}")}
    assert all(entry.reference is None for entry in ledger.values())


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_reference_counts_as_none(blank: str) -> None:
    event = paid(at(9), reference=blank)
    entry = ledger_entry(event)
    assert entry.entry_key == f"delivery:{event.key}"
    assert entry.reference is None


def test_a_numeric_reference_is_kept_as_text() -> None:
    assert ledger_entry(paid(at(9), reference=99812)).entry_key == "ref:99812"


def test_entries_of_different_jte_events_are_kept_apart() -> None:
    a = make_event(PAYMENT_CONFIRMED, when=at(9), slug="conf-a", fields=paying(reference="R"))
    b = make_event(PAYMENT_CONFIRMED, when=at(9), slug="conf-b", fields=paying(reference="R"))
    assert set(merge([ledger_entry(a), ledger_entry(b)])) == {
        ("conf-a", "ref:R"),
        ("conf-b", "ref:R"),
    }


def test_payment_fields_are_read_from_the_attendee_when_there_is_no_payment_object() -> None:
    fields: dict[str, Any] = {
        "total": "120.50",
        "currency": "eur",
        "gateway": "TPay",
        "transactionId": "TX-5",
    }
    entry = ledger_entry(make_event(PAYMENT_CONFIRMED, when=at(9), fields=fields))
    assert (entry.amount, entry.currency, entry.method, entry.reference) == (
        Decimal("120.50"),
        "EUR",
        "tpay",
        "TX-5",
    )


def test_a_deletion_is_not_a_refund() -> None:
    events = [
        make_event(REGISTERED, when=at(8)),
        paid(at(9), "349.00", reference="R-1"),
        make_event(DELETED, when=at(10)),
        make_event(CHECKED_IN, when=at(11)),
    ]
    # Everything the attendee went through goes to the ledger; only the payment makes an entry.
    ledger = ledger_of(events)
    assert list(ledger) == [(SLUG, "ref:R-1")]
    assert ledger[(SLUG, "ref:R-1")].amount == Decimal("349.00")
    entry = fold(events)[(SLUG, "a-1")]
    assert entry.status == "deleted"
    assert entry.paid


def test_only_payment_confirmations_make_entries() -> None:
    with pytest.raises(PaymentError):
        ledger_entry(make_event(CHECKED_IN, when=at(9), fields=paying()))
    assert ledger_entries([make_event(REGISTERED, when=at(8), fields=paying())]) == []


# --- Amounts and currencies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("349.00", "349.00"),
        (" 349.00 ", "349.00"),
        ("0", "0"),
        ("0.10", "0.10"),
        (349, "349"),
        (Decimal("12.345"), "12.345"),
        ("999999999999.99", "999999999999.99"),
    ],
)
def test_amounts_are_exact_decimals(amount: object, expected: str) -> None:
    entry = ledger_entry(paid(at(9), amount))
    assert isinstance(entry.amount, Decimal)
    assert str(entry.amount) == expected


@pytest.mark.parametrize(
    ("json_amount", "expected"),
    [("349.10", "349.10"), ("349", "349"), ("0.1", "0.1"), ('"349.00"', "349.00")],
)
def test_json_numbers_are_decimals_after_interpretation(json_amount: str, expected: str) -> None:
    # Through the real decoder: a JSON number like 0.1 must never pass through a binary float.
    body = (
        b'{"event": "AttendeePaymentConfirmed", "occurredAt": "2026-05-14T09:00:00Z", '
        b'"attendee": {"id": "a-1", "payment": {"amount": %s, "currency": "PLN"}}}'
        % json_amount.encode()
    )
    entry = ledger_entry(delivered(body, at(9, 5)))
    assert isinstance(entry.amount, Decimal)
    assert str(entry.amount) == expected
    # The occurrence time, not the receipt time, is when it was paid.
    assert entry.paid_at == datetime(2026, 5, 14, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "amount",
    [None, "", "abc", "349,00", True, False, "-0.01", -5, "NaN", "Infinity", "1e12", [349], {}],
)
def test_an_unusable_amount_is_poison(amount: object) -> None:
    with pytest.raises(PaymentError):
        ledger_entry(paid(at(9), amount))


def test_a_missing_amount_is_poison() -> None:
    event = make_event(PAYMENT_CONFIRMED, when=at(9), fields={"payment": {"currency": "PLN"}})
    with pytest.raises(PaymentError):
        ledger_entry(event)


@pytest.mark.parametrize(
    ("currency", "expected"), [("PLN", "PLN"), ("eur", "EUR"), (" Usd ", "USD")]
)
def test_currencies_are_upper_cased(currency: str, expected: str) -> None:
    assert ledger_entry(paid(at(9), currency=currency)).currency == expected


@pytest.mark.parametrize("currency", [None, "", "PL", "PLNX", "zł", "P1N", 985, True])
def test_an_unusable_currency_is_poison(currency: object) -> None:
    with pytest.raises(PaymentError):
        ledger_entry(paid(at(9), currency=currency))


# --- Methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("payu", "payu"),
        ("PayU", "payu"),
        (1, "payu"),
        ("przelewy24", "przelewy24"),
        ("Przelewy24", "przelewy24"),
        ("P24", "przelewy24"),
        ("p24", "przelewy24"),
        (2, "przelewy24"),
        ("2", "przelewy24"),
        ("tpay", "tpay"),
        ("TPay", "tpay"),
        (3, "tpay"),
        ("bank transfer", "bank_transfer"),
        ("Bank Transfer", "bank_transfer"),
        ("bank_transfer", "bank_transfer"),
        (" przelew ", "bank_transfer"),
        (None, "unknown"),
        ("", "unknown"),
        ("Apple Pay", "apple_pay"),  # unknown gateways are kept, lowercased
    ],
)
def test_methods_are_normalised(method: object, expected: str) -> None:
    assert method_name(method) == expected
    assert ledger_entry(paid(at(9), method=method)).method == expected


def test_a_confirmation_without_a_method_is_unknown() -> None:
    event = make_event(
        PAYMENT_CONFIRMED, when=at(9), fields={"payment": {"amount": "1", "currency": "PLN"}}
    )
    assert ledger_entry(event).method == "unknown"


# --- Totals --------------------------------------------------------------------------------------


def payments_day() -> list[AttendeeEvent]:
    """Confirmations in two currencies, four spellings of three methods, over two days."""
    return [
        paid(at(9), "349.00", "PLN", "p24", "R-1"),
        paid(at(10), "0.10", "PLN", "przelewy24", "R-2"),
        paid(at(11), "0.20", "PLN", "przelewy24", "R-3"),
        paid(at(11), "100.00", "EUR", "payu", "R-4"),
        paid(at(12), "50.00", "PLN", "bank transfer", "R-5"),
        paid(datetime(2026, 5, 15, 0, 0, tzinfo=UTC), "1.00", "PLN", "p24", "R-6"),
        paid(at(13), "999.00", "PLN", "p24", "R-1"),  # supersedes the 349.00 of R-1
    ]


def test_totals_sum_exactly_by_currency_method_and_day() -> None:
    result = totals(ledger_of(payments_day()).values())
    summary = {(t.currency, t.method, t.day): (t.payments, t.amount) for t in result}
    assert summary == {
        ("EUR", "payu", date(2026, 5, 14)): (1, Decimal("100.00")),
        ("PLN", "bank_transfer", date(2026, 5, 14)): (1, Decimal("50.00")),
        ("PLN", "przelewy24", date(2026, 5, 14)): (3, Decimal("999.30")),
        ("PLN", "przelewy24", date(2026, 5, 15)): (1, Decimal("1.00")),
    }
    # 0.10 + 0.20 in binary floating point would not be 0.30.
    assert str(summary[("PLN", "przelewy24", date(2026, 5, 14))][1]) == "999.30"
    assert all(t.slug == SLUG for t in result)
    # Sorted, so that the same ledger always gives the same list.
    assert result == sorted(result, key=lambda t: (t.slug, t.currency, t.method, t.day))


def test_totals_of_nothing_is_empty() -> None:
    assert totals([]) == []


def test_amounts_with_more_than_six_decimal_places_are_poison() -> None:
    # Beyond six places no currency makes sense, and sums could no longer stay exact.
    with pytest.raises(PaymentError, match="decimal places"):
        ledger_entry(paid(at(10), "0.00000000000000005", reference="R-2"))


def test_totals_are_exact_at_the_largest_accepted_amounts() -> None:
    events = [
        paid(at(9), "999999999999.999999", reference="R-1"),
        paid(at(10), "0.000001", reference="R-2"),
        paid(at(11), "0.000001", reference="R-3"),
    ]
    entries = list(ledger_of(events).values())
    exact = Decimal("1000000000000.000001")
    assert totals(entries)[0].amount == exact
    assert totals(list(reversed(entries)))[0].amount == exact


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"total": "5.00", "currency": "PLN", "gateway": "payu", "transactionId": "T-1"},
            {"amount": "5.00", "currency": "PLN", "method": "payu", "reference": "T-1"},
        ),
        (
            {"paidAmount": 7, "currency": "EUR", "paymentMethod": "tpay", "paymentReference": "P"},
            {"amount": 7, "currency": "EUR", "method": "tpay", "reference": "P"},
        ),
        (
            {"paidAmount": "1", "currency": "PLN", "paymentSystem": "przelewy24"},
            {"amount": "1", "currency": "PLN", "method": "przelewy24", "reference": None},
        ),
    ],
    ids=["total-gateway-transactionId", "paidAmount-paymentMethod", "paymentSystem"],
)
def test_every_spelling_of_the_payment_fields_is_read(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    # Killed mutants (scripts/mutation.py): the alternative names JTE may use went untested.
    assert payment_fields({"id": "a-1", "payment": fields}) == expected
    assert payment_fields({"id": "a-1", **fields}) == expected  # or on the attendee itself
