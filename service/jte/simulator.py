"""`rollcall simulate`: a realistic, deterministic JTE event day, signed as JTE signs it.

simulate() plans the day from a seed alone (no clock, no I/O): registrations, a bulk import,
updates, deletions and revivals, payments, then check-ins and check-outs on the day, in
occurrence order, plus the noise a real sender adds (retried duplicates, late arrivals, forged
and unreadable deliveries). sign_all() signs it for a configured JTE event; write_jsonl() and
read_jsonl() keep it as JSON lines. service/sender.py sends it.
"""

from __future__ import annotations

import itertools
import os
import random
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any, Final, Literal

import msgspec

from service.config import EventConfig
from service.jte.signing import sign

Expect = Literal["accepted", "duplicate", "quarantined", "unauthorized"]


class SimulationOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What to simulate; the shares are fractions (0..1) of the day's deliveries."""

    seed: int = 1
    attendees: int = 200
    day: date = date(2026, 5, 14)  # the conference day (UTC)
    # Sent a second time (same body, same delivery id), later in the stream.
    duplicates: float = 0.0
    # Arrive displaced (later) from their occurrence order.
    out_of_order: float = 0.0
    # Extra forged deliveries, signed with a wrong secret.
    bad_signatures: float = 0.0
    # Extra verified-but-unreadable bodies: truncated JSON, unknown event type, no attendee id.
    malformed: float = 0.0


class SimulatedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery as JTE would send it, and what rollcall must answer when sent in list order."""

    body: bytes
    delivery_id: str
    event_type: str | None  # None for malformed ones
    attendee_id: str | None
    expect: Expect
    forged: bool = False  # sign with a wrong secret


class SignedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery ready to send: the body as UTF-8 text and the headers signed for its JTE event."""

    slug: str
    body: str
    headers: dict[str, str]
    expect: Expect
    delivery_id: str


def simulate(options: SimulationOptions) -> list[SimulatedDelivery]:
    """A JTE event day in arrival order; the same options always give the same list.

    Pure: no I/O, no clock, no global random state."""
    _check(options)
    rng = random.Random(options.seed)
    occurrences = _Planner(rng, _Calendar.of(options.day)).plan(_profiles(rng, options.attendees))
    # The day is drawn first, so the noise options never change the day itself.
    base = [_delivery(rng, occurrence) for occurrence in occurrences]
    return _arrival(rng, occurrences, base, options)


def sign_all(
    deliveries: Sequence[SimulatedDelivery], event: EventConfig, *, now: float
) -> list[SignedDelivery]:
    """Sign every delivery for `event` at Unix time `now`; forged ones with a wrong secret."""
    wrong = _wrong_secret(event)
    return [
        SignedDelivery(
            slug=event.slug,
            body=d.body.decode(),
            headers=sign(
                event,
                d.body,
                now=now,
                secret=wrong if d.forged else None,
                delivery_id=d.delivery_id,
            ),
            expect=d.expect,
            delivery_id=d.delivery_id,
        )
        for d in deliveries
    ]


def _check(options: SimulationOptions) -> None:
    if not 1 <= options.attendees <= 100_000:
        raise ValueError("attendees must be between 1 and 100000")
    shares = ("duplicates", "out_of_order", "bad_signatures", "malformed")
    for name in shares:
        if not 0 <= getattr(options, name) <= 1:
            raise ValueError(f"{name} must be a share between 0 and 1")


def _wrong_secret(event: EventConfig) -> str:
    wrong = "forged:" + (event.secrets[0] if event.secrets else "")
    while wrong in event.secrets:
        wrong = "forged:" + wrong
    return wrong


# --- Who comes: attendee profiles ----------------------------------------------------------

_PL_FEMALE: Final = (
    "Anna", "Maria", "Katarzyna", "Małgorzata", "Agnieszka", "Zofia", "Aleksandra", "Joanna",
    "Magdalena", "Ewa", "Łucja", "Zuzanna", "Weronika", "Jadwiga", "Grażyna", "Ola",
)  # fmt: skip
_PL_MALE: Final = (
    "Piotr", "Krzysztof", "Tomasz", "Paweł", "Michał", "Łukasz", "Jakub", "Wojciech",
    "Grzegorz", "Mateusz", "Jędrzej", "Bartosz", "Szymon", "Maciej", "Przemysław", "Jan",
)  # fmt: skip
# (masculine, feminine) forms of Polish surnames.
_PL_SURNAMES: Final = (
    ("Nowak", "Nowak"), ("Kowalski", "Kowalska"), ("Wiśniewski", "Wiśniewska"),
    ("Wójcik", "Wójcik"), ("Kowalczyk", "Kowalczyk"), ("Kamiński", "Kamińska"),
    ("Lewandowski", "Lewandowska"), ("Zieliński", "Zielińska"), ("Szymański", "Szymańska"),
    ("Woźniak", "Woźniak"), ("Dąbrowski", "Dąbrowska"), ("Kozłowski", "Kozłowska"),
    ("Mazur", "Mazur"), ("Krawczyk", "Krawczyk"), ("Grabowski", "Grabowska"),
    ("Pawłowski", "Pawłowska"), ("Michalski", "Michalska"), ("Żak", "Żak"), ("Król", "Król"),
    ("Gołębiowski", "Gołębiowska"), ("Ślęzak", "Ślęzak"), ("Jabłoński", "Jabłońska"),
)  # fmt: skip
# First and last names by country, so that a name is never a cross-cultural mix.
_INTERNATIONAL: Final = (
    (("Lukas", "Emma", "Jonas", "Lea"), ("Müller", "Schmidt", "Weiß", "Schäfer")),
    (("Olena", "Dmytro", "Oksana", "Andriy"), ("Shevchenko", "Kovalenko", "Bondarenko")),
    (("Sofía", "Mateo", "Lucía", "Javier"), ("García", "Fernández", "Muñoz")),
    (("Chloé", "Léa", "Théo", "Hugo"), ("Lefèvre", "Dubois", "Moreau")),
    (("João", "Inês", "Tiago"), ("Gonçalves", "Araújo", "Simões")),
    (("Aoife", "Liam", "Siobhán"), ("O'Brien", "Murphy", "Ní Bhriain")),
    (("Jiří", "Eliška", "Tomáš"), ("Dvořák", "Novotná", "Černý")),
    (("Zeynep", "Emre", "Ayşe"), ("Demir", "Şahin", "Çelik")),
    (("Søren", "Ingrid", "Björn"), ("Østergaard", "Lindqvist", "Sørensen")),
    (("Arjun", "Priya", "Mei", "Hiroshi"), ("Patel", "Sharma", "Chen", "Tanaka")),
)
_PL_COMPANIES: Final = (
    ("Allegro", "allegro.pl"), ("CD Projekt", "cdprojekt.com"), ("Comarch", "comarch.pl"),
    ("Asseco Poland", "asseco.pl"), ("Żabka Polska", "zabka.pl"), ("Brainly", "brainly.com"),
    ("Docplanner", "docplanner.com"), ("Booksy", "booksy.com"), ("Synerise", "synerise.com"),
    ("Netguru", "netguru.com"), ("STX Next", "stxnext.com"), ("10Clouds", "10clouds.com"),
    ("Politechnika Wrocławska", "pwr.edu.pl"), ("Uniwersytet Jagielloński", "uj.edu.pl"),
)  # fmt: skip
_INTERNATIONAL_COMPANIES: Final = (
    ("Zalando", "zalando.de"), ("Spotify", "spotify.com"), ("SAP", "sap.com"),
    ("Revolut", "revolut.com"), ("Klarna", "klarna.com"), ("JetBrains", "jetbrains.com"),
    ("Booking.com", "booking.com"), ("Adyen", "adyen.com"),
)  # fmt: skip
_UNIVERSITIES: Final = frozenset({"Politechnika Wrocławska", "Uniwersytet Jagielloński"})
_PL_MAIL: Final = ("gmail.com", "wp.pl", "onet.pl", "o2.pl", "interia.pl", "outlook.com")
_INTERNATIONAL_MAIL: Final = ("gmail.com", "outlook.com", "proton.me", "gmx.de")
_DIETS: Final = ("none", "none", "none", "vegetarian", "vegan", "gluten-free", "lactose-free")
_SIZES: Final = ("XS", "S", "M", "M", "L", "L", "XL", "XXL")
_ASCII_FOLD: Final = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss"})


class _Profile(msgspec.Struct, frozen=True, kw_only=True):
    attendee_id: str
    first_name: str
    last_name: str
    email: str
    company: str | None
    domain: str | None
    role: str
    added_by_admin: bool
    currency: str
    custom: dict[str, Any]


def _profiles(rng: random.Random, count: int) -> list[_Profile]:
    numbers = sorted(rng.sample(range(1, 1_000_000), count))
    emails: set[str] = set()
    return [
        _profile(rng, f"a-{number:06d}", role, emails)
        for number, role in zip(numbers, _roles(rng, count), strict=True)
    ]


def _roles(rng: random.Random, count: int) -> list[str]:
    roles = (
        ["organizer"] * _quota(count, 0.03)
        + ["speaker"] * _quota(count, 0.07)
        + [""] * _quota(count, 0.04)
    )[:count]
    roles += ["attendee"] * (count - len(roles))
    rng.shuffle(roles)
    return roles


def _quota(count: int, share: float, minimum: int = 1) -> int:
    """`share` of `count`, but at least `minimum` once there are enough to choose from."""
    wanted = round(count * share)
    return min(count, max(minimum, wanted)) if count >= 4 * minimum else wanted


def _profile(rng: random.Random, attendee_id: str, role: str, emails: set[str]) -> _Profile:
    international = rng.random() < 0.2
    first, last = _international_name(rng) if international else _polish_name(rng)
    companies = _INTERNATIONAL_COMPANIES if international else _PL_COMPANIES
    company, domain = rng.choice(companies) if rng.random() < 0.85 else (None, None)
    staff = role in ("speaker", "organizer")
    return _Profile(
        attendee_id=attendee_id,
        first_name=first,
        last_name=last,
        email=_email(rng, first, last, domain, international, emails),
        company=company,
        domain=domain,
        role=role,
        added_by_admin=rng.random() < (0.8 if staff else 0.02),
        currency="EUR" if rng.random() < (0.7 if international else 0.03) else "PLN",
        custom=_custom_fields(rng, international, company),
    )


def _polish_name(rng: random.Random) -> tuple[str, str]:
    masculine, feminine = rng.choice(_PL_SURNAMES)
    if rng.random() < 0.5:
        return rng.choice(_PL_FEMALE), feminine
    return rng.choice(_PL_MALE), masculine


def _international_name(rng: random.Random) -> tuple[str, str]:
    firsts, lasts = rng.choice(_INTERNATIONAL)
    return rng.choice(firsts), rng.choice(lasts)


def _email(
    rng: random.Random,
    first: str,
    last: str,
    domain: str | None,
    international: bool,
    taken: set[str],
) -> str:
    if domain is None or rng.random() < 0.4:
        domain = rng.choice(_INTERNATIONAL_MAIL if international else _PL_MAIL)
    local = rng.choice([f"{_ascii(first)}.{_ascii(last)}", f"{_ascii(first)[0]}{_ascii(last)}"])
    email = f"{local}@{domain}"
    while email in taken:
        email = f"{local}{rng.randint(2, 99)}@{domain}"
    taken.add(email)
    return email


def _ascii(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def _custom_fields(rng: random.Random, international: bool, company: str | None) -> dict[str, Any]:
    """The event's own registration-form fields: each attendee fills in a different subset."""
    fields: dict[str, Any] = {}
    if rng.random() < 0.8:
        fields["dietaryPreferences"] = rng.choice(_DIETS)
    if rng.random() < 0.7:
        fields["tShirtSize"] = rng.choice(_SIZES)
    if rng.random() < 0.3:
        prefix = rng.choice(("+49", "+44", "+380", "+34")) if international else "+48"
        digits = [rng.randint(500, 899), rng.randint(100, 999), rng.randint(100, 999)]
        fields["phone"] = " ".join(map(str, [prefix, *digits]))
    if company and not international and rng.random() < 0.35:
        fields["invoice"] = {
            "companyName": company,
            "nip": "".join(str(rng.randint(0, 9)) for _ in range(10)),
            "city": rng.choice(("Warszawa", "Kraków", "Wrocław", "Gdańsk", "Łódź", "Poznań")),
        }
    fields["marketingConsent"] = rng.random() < 0.4
    return fields


# --- When: the plan of the day and the weeks before it -------------------------------------


class _Calendar(msgspec.Struct, frozen=True):
    opens: datetime  # registration opens
    start: datetime  # 08:00 UTC on the conference day
    end: datetime  # 18:00 UTC

    @classmethod
    def of(cls, day: date) -> _Calendar:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start = midnight + timedelta(hours=8)
        return cls(opens=start - timedelta(days=42), start=start, end=start + timedelta(hours=10))

    def clock(self, hours: float) -> datetime:
        """The conference day at `hours` UTC (8.5 is 08:30)."""
        return self.start + timedelta(hours=hours - 8)


class _Step(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    seq: int
    event_type: str
    change: dict[str, Any]  # fields that stay changed from now on
    extra: dict[str, Any]  # keys for this delivery only (the payment)
    only_id: bool  # a deletion that carries just the attendee id


class _Occurrence(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    seq: int
    event_type: str
    attendee: dict[str, Any]


_PRICES: Final = {
    "Early bird": {"PLN": Decimal("349.00"), "EUR": Decimal("79.00")},
    "Regular": {"PLN": Decimal("499.00"), "EUR": Decimal("119.00")},
    "VIP": {"PLN": Decimal("1299.99"), "EUR": Decimal("299.99")},
    "Student": {"PLN": Decimal("99.50"), "EUR": Decimal("24.50")},
    "Group (5+)": {"PLN": Decimal("399.00"), "EUR": Decimal("94.00")},
}
_FREE_TICKETS: Final = {"organizer": "Staff", "speaker": "Speaker"}
_DISCOUNT_CODES: Final = ("JTE10", "COMMUNITY10", "MEETUP10")
_UNKNOWN_TYPES: Final = ("AttendeeBadgePrinted", "TicketCreated", "attendee.checked_in")
_REFERENCE_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class _Planner:
    """Plans every attendee's steps, then plays them into full attendee snapshots."""

    def __init__(self, rng: random.Random, calendar: _Calendar) -> None:
        self.rng = rng
        self.cal = calendar
        self.steps: dict[str, list[_Step]] = defaultdict(list)
        self.payments: list[tuple[str, _Step]] = []
        self.arrivals: dict[str, datetime] = {}
        self._seq = itertools.count()
        self._transfers = itertools.count(1)
        self._references: set[str] = set()

    def plan(self, profiles: list[_Profile]) -> list[_Occurrence]:
        staff = [p for p in profiles if p.role in _FREE_TICKETS]
        public = [p for p in profiles if p.role not in _FREE_TICKETS]
        walk_ins, late, imported, registered = self._split(public)
        for profile in staff:
            self._register_staff(profile)
        for profile in registered:
            self._register(profile)
        self._import(imported, registered)
        self._resend_payments()
        self._update(registered)
        gone = self._delete(registered)
        self._the_day(staff + registered + imported, walk_ins, late, gone)
        return self._play()

    # -- helpers

    def add(
        self,
        attendee_id: str,
        at: datetime,
        event_type: str,
        change: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        only_id: bool = False,
    ) -> _Step:
        step = _Step(
            at=at.replace(microsecond=0),
            seq=next(self._seq),
            event_type=event_type,
            change=change or {},
            extra=extra or {},
            only_id=only_id,
        )
        self.steps[attendee_id].append(step)
        return step

    def between(self, earliest: datetime, latest: datetime) -> datetime:
        seconds = max(0.0, (latest - earliest).total_seconds())
        return earliest + timedelta(seconds=self.rng.uniform(0, seconds))

    def minutes(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=self.rng.uniform(low, high))

    def pick(self, profiles: Sequence[_Profile], share: float) -> list[_Profile]:
        return self.rng.sample(list(profiles), _quota(len(profiles), share))

    def last(self, attendee_id: str) -> datetime:
        return max(step.at for step in self.steps[attendee_id])

    # -- before the day

    def _split(self, public: list[_Profile]) -> list[list[_Profile]]:
        """Walk-ins, registrations on the day, a bulk import, and the ordinary registrations."""
        pool = list(public)
        self.rng.shuffle(pool)
        parts = []
        for share, minimum in ((0.03, 1), (0.02, 1), (0.06, 3)):
            size = _quota(len(public), share, minimum)
            parts.append(pool[:size])
            pool = pool[size:]
        return [*parts, pool]

    def _register_staff(self, profile: _Profile) -> None:
        at = self.between(self.cal.opens, self.cal.opens + timedelta(days=21))
        form = _form(profile, _FREE_TICKETS[profile.role])
        self.add(profile.attendee_id, _daytime(at), "AttendeeRegistered", form)

    def _register(self, profile: _Profile) -> None:
        # A rush for the early-bird price, then a steady trickle until the day before.
        early_bird_ends = self.cal.opens + timedelta(days=14)
        if self.rng.random() < 0.35:
            at = self.between(self.cal.opens, early_bird_ends)
        else:
            at = self.between(early_bird_ends, self.cal.start - timedelta(days=1))
        at = _daytime(at)
        ticket = self._ticket(profile, at < early_bird_ends)
        form = _form(profile, ticket)
        discounted = self.rng.random() < 0.1
        if discounted:
            form["discountCode"] = self.rng.choice(_DISCOUNT_CODES)
        self.add(profile.attendee_id, at, "AttendeeRegistered", form)
        if self.rng.random() < 0.95:  # some never pay
            self._pay(profile, ticket, at, discounted=discounted)

    def _ticket(self, profile: _Profile, early: bool) -> str:
        if profile.company in _UNIVERSITIES and self.rng.random() < 0.8:
            return "Student"
        if self.rng.random() < 0.1:
            return "VIP"
        return "Early bird" if early else "Regular"

    def _pay(
        self,
        profile: _Profile,
        ticket: str,
        registered_at: datetime,
        *,
        discounted: bool = False,
        method: str | None = None,
        people: int = 1,
    ) -> None:
        amount = _PRICES[ticket][profile.currency] * people
        if discounted:
            amount = (amount * Decimal("0.90")).quantize(Decimal("0.01"))
        if method is None:
            method = "bank_transfer" if self.rng.random() < 0.15 else self._gateway(registered_at)
        paid_at = registered_at + self.minutes(1, 25)
        if method == "bank_transfer" and registered_at < self.cal.start:
            # A transfer is confirmed by hand a few days later, at the latest the day before.
            paid_at = min(
                registered_at + self.minutes(600, 7200), self.cal.start - timedelta(hours=2)
            )
            paid_at = max(paid_at, registered_at + timedelta(minutes=30))
        payment = {
            "amount": self._amount_json(amount),
            "currency": profile.currency,
            "method": method,
            "reference": self._reference(method, paid_at),
        }
        step = self.add(
            profile.attendee_id, paid_at, "AttendeePaymentConfirmed", extra={"payment": payment}
        )
        self.payments.append((profile.attendee_id, step))

    def _gateway(self, at: datetime) -> str:
        """Only one online gateway is active at a time; the organiser switched twice."""
        progress = (at - self.cal.opens) / (self.cal.start - self.cal.opens)
        return "payu" if progress < 0.4 else "przelewy24" if progress < 0.75 else "tpay"

    def _amount_json(self, amount: Decimal) -> Decimal | msgspec.Raw:
        # Mostly an exact decimal string; sometimes a JSON number, written as exact text.
        if self.rng.random() < 0.25:
            return msgspec.Raw(f"{amount:.2f}".encode())
        return amount

    def _reference(self, method: str, at: datetime) -> str:
        while True:
            if method == "bank_transfer":
                reference = f"BT/{at:%Y/%m}/{next(self._transfers):04d}"
            else:
                prefix = {"payu": "PAYU-", "przelewy24": "P24-", "tpay": "TPAY-"}[method]
                digits = method == "przelewy24"
                alphabet = "0123456789" if digits else _REFERENCE_ALPHABET
                reference = prefix + "".join(self.rng.choice(alphabet) for _ in range(10))
            if reference not in self._references:
                self._references.add(reference)
                return reference

    def _import(self, imported: list[_Profile], registered: list[_Profile]) -> None:
        """One bulk import of a company's group, at one minute; some rows update attendees."""
        if not imported:
            return
        when = _daytime(self.cal.opens + timedelta(days=self.rng.uniform(24, 30)))
        minute = when.replace(second=0)
        company, _ = self.rng.choice(_PL_COMPANIES[:10])
        earlier = [p for p in registered if self.last(p.attendee_id) < minute]
        updated = self.pick(earlier, 0.02)
        changes = [
            _form(
                msgspec.structs.replace(p, company=company, role="attendee"),
                "Group (5+)",
                admin=True,
            )
            for p in imported
        ] + [{"company": company, "ticket": "Group (5+)", "role": "attendee"}] * len(updated)
        for row, (profile, change) in enumerate(zip(imported + updated, changes, strict=True)):
            at = minute + timedelta(seconds=row * 59 // len(changes))
            self.add(profile.attendee_id, at, "AttendeeImported", change)
        # The company pays for the whole group at once, by bank transfer.
        self._pay(imported[0], "Group (5+)", minute, method="bank_transfer", people=len(imported))

    def _resend_payments(self) -> None:
        """JTE sometimes confirms the same payment again: a new delivery, the same reference."""
        for attendee_id, step in self.rng.sample(self.payments, _quota(len(self.payments), 0.03)):
            again = step.at + self.minutes(5, 180)
            self.add(attendee_id, again, step.event_type, extra=step.extra)

    def _update(self, registered: list[_Profile]) -> None:
        for profile in self.pick(registered, 0.1):
            latest = self.cal.start - timedelta(hours=12)
            after = self.last(profile.attendee_id) + timedelta(hours=1)
            if after < latest:
                at = self.between(after, latest)
                self.add(profile.attendee_id, at, "AttendeeUpdated", self._change(profile))

    def _change(self, profile: _Profile) -> dict[str, Any]:
        kind = self.rng.choice(("company", "ticket", "email"))
        if kind == "company":
            company, _ = self.rng.choice(_PL_COMPANIES)
            return {"company": company}
        if kind == "ticket":
            return {"ticket": "VIP"}
        local, _, domain = profile.email.partition("@")
        return {"email": f"{local}.{self.rng.randint(1, 9)}@{domain}"}

    def _delete(self, registered: list[_Profile]) -> set[str]:
        """A few attendees are deleted; some of them come back. Returns those who stay gone."""
        deadline = self.cal.start - timedelta(days=3)
        candidates = [p for p in registered if self.last(p.attendee_id) < deadline]
        deleted = self.pick(candidates, 0.03)
        if len(deleted) < 2 and len(candidates) >= 8:
            deleted = self.rng.sample(candidates, 2)
        revived = deleted[: len(deleted) // 2]
        for profile in deleted:
            at = self.between(self.last(profile.attendee_id) + timedelta(hours=1), deadline)
            only_id = self.rng.random() < 0.6
            self.add(profile.attendee_id, at, "AttendeeDeleted", only_id=only_id)
        for profile in revived:
            back = self.last(profile.attendee_id) + self.minutes(60, 3 * 24 * 60)
            again = self.rng.choice(("AttendeeRegistered", "AttendeeUpdated"))
            self.add(profile.attendee_id, back, again, _form(profile, "Regular"))
        return {p.attendee_id for p in deleted[len(revived) :]}

    # -- the day

    def _the_day(
        self,
        expected: list[_Profile],
        walk_ins: list[_Profile],
        late: list[_Profile],
        gone: set[str],
    ) -> None:
        present = [
            p
            for p in expected
            if p.attendee_id not in gone and self.rng.random() < _SHOW_UP.get(p.role, 0.88)
        ]
        for profile in present:
            self.arrivals[profile.attendee_id] = self._arrival_time(profile)
        for profile in walk_ins:
            self._walk_in(profile)
        for profile in late:
            self._late_registration(profile)
        visitors = present + walk_ins + late
        self._visits(visitors)
        self._stray_check_outs(expected, visitors, gone)
        self._desk_updates(visitors)

    def _arrival_time(self, profile: _Profile) -> datetime:
        if profile.role == "organizer":
            return self.between(self.cal.clock(8), self.cal.clock(8.4))
        if profile.role == "speaker":
            return self.between(self.cal.clock(8.5), self.cal.clock(13))
        draw = self.rng.random()
        if draw < 0.7:  # the morning peak
            return self.cal.clock(self.rng.triangular(8.5, 9.5, 9.0))
        if draw < 0.9:
            return self.cal.clock(self.rng.uniform(9.5, 12))
        return self.cal.clock(self.rng.uniform(12, 15))

    def _walk_in(self, profile: _Profile) -> None:
        """Added at the desk: the check-in reaches JTE's webhook before the registration does."""
        arrive = self.between(self.cal.clock(9), self.cal.clock(11.5))
        form = _form(profile, "Regular", admin=True)
        self.add(profile.attendee_id, arrive, "AttendeeCheckedIn", form)
        registered = arrive + self.minutes(2, 10)
        self.add(profile.attendee_id, registered, "AttendeeRegistered", form)
        self._pay(profile, "Regular", registered, method="tpay")
        self.arrivals[profile.attendee_id] = arrive

    def _late_registration(self, profile: _Profile) -> None:
        registered = self.between(self.cal.clock(8), self.cal.clock(12))
        self.add(profile.attendee_id, registered, "AttendeeRegistered", _form(profile, "Regular"))
        self._pay(profile, "Regular", registered, method=self._gateway(registered))
        self.arrivals[profile.attendee_id] = registered + self.minutes(30, 90)

    def _visits(self, visitors: list[_Profile]) -> None:
        morning = [p for p in visitors if self.arrivals[p.attendee_id] < self.cal.clock(11.5)]
        lunch = {p.attendee_id for p in self.pick(morning, 0.15)}
        double = {p.attendee_id for p in self.pick(visitors, 0.02)}
        for profile in visitors:
            self._visit(profile.attendee_id, lunch=profile.attendee_id in lunch)
            if profile.attendee_id in double:
                self._double_scan(profile.attendee_id)
        for profile in visitors:
            self._leave(profile.attendee_id)

    def _visit(self, attendee_id: str, *, lunch: bool) -> None:
        arrive = self.arrivals[attendee_id]
        if not any(s.event_type == "AttendeeCheckedIn" for s in self.steps[attendee_id]):
            self.add(attendee_id, arrive, "AttendeeCheckedIn")
        if lunch:
            out = self.between(self.cal.clock(12), self.cal.clock(13.25))
            self.add(attendee_id, out, "AttendeeCheckedOut")
            self.add(attendee_id, out + self.minutes(20, 75), "AttendeeCheckedIn")

    def _double_scan(self, attendee_id: str) -> None:
        """A badge scanned twice: a check-in of someone already inside."""
        self.add(attendee_id, self.last(attendee_id) + self.minutes(1, 15), "AttendeeCheckedIn")

    def _leave(self, attendee_id: str) -> None:
        inside_since = self.last(attendee_id)
        draw = self.rng.random()
        if draw < 0.12:  # never checks out
            return
        if draw < 0.2:
            leave = self.between(max(inside_since, self.cal.clock(13.5)), self.cal.clock(15.5))
        else:
            leave = self.cal.clock(self.rng.triangular(15.5, 17.99, 17))
        if inside_since + timedelta(minutes=10) < leave < self.cal.end:
            self.add(attendee_id, leave, "AttendeeCheckedOut")

    def _stray_check_outs(
        self, expected: list[_Profile], visitors: list[_Profile], gone: set[str]
    ) -> None:
        """A check-out of someone who is not inside: never came, or already left."""
        inside = {p.attendee_id for p in visitors}
        absent = [p for p in expected if p.attendee_id not in inside | gone]
        left = [p for p in visitors if self._latest(p.attendee_id) == "AttendeeCheckedOut"]
        for profile in self.pick(absent or left, 0.01):
            after = max(self.last(profile.attendee_id), self.cal.clock(16))
            at = self.between(after, self.cal.clock(17.99))
            self.add(profile.attendee_id, at, "AttendeeCheckedOut")

    def _latest(self, attendee_id: str) -> str:
        return max(self.steps[attendee_id], key=lambda s: (s.at, s.seq)).event_type

    def _desk_updates(self, visitors: list[_Profile]) -> None:
        """Details corrected at the registration desk during the day."""
        for profile in self.pick(visitors, 0.02):
            at = min(self.arrivals[profile.attendee_id] + self.minutes(5, 90), self.cal.clock(17.5))
            self.add(profile.attendee_id, at, "AttendeeUpdated", self._change(profile))

    # -- snapshots

    def _play(self) -> list[_Occurrence]:
        """Each step carries the attendee as it is at that moment, as JTE would send it."""
        occurrences = []
        for attendee_id, steps in self.steps.items():
            fields: dict[str, Any] = {}
            for step in sorted(steps, key=lambda s: (s.at, s.seq)):
                fields.update(step.change)
                attendee = {"id": attendee_id} if step.only_id else {"id": attendee_id, **fields}
                attendee.update(step.extra)
                occurrences.append(
                    _Occurrence(
                        at=step.at, seq=step.seq, event_type=step.event_type, attendee=attendee
                    )
                )
        return sorted(occurrences, key=lambda o: (o.at, o.seq))


_SHOW_UP: Final = {"organizer": 1.0, "speaker": 0.95}


def _daytime(at: datetime) -> datetime:
    """Registrations and admin work happen between 06:00 and 22:00 UTC, not at night."""
    return at + timedelta(hours=8) if at.hour < 6 else at


def _form(profile: _Profile, ticket: str, *, admin: bool | None = None) -> dict[str, Any]:
    form: dict[str, Any] = {
        "firstName": profile.first_name,
        "lastName": profile.last_name,
        "email": profile.email,
    }
    if profile.company is not None:
        form["company"] = profile.company
    form["ticket"] = ticket
    form["role"] = profile.role
    form["addedByAdmin"] = profile.added_by_admin if admin is None else admin
    form.update(profile.custom)
    return form


# --- How it arrives: delivery ids, bodies, and a real sender's noise -----------------------


def _delivery_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _body(event_type: str, delivery_id: str, at: datetime, attendee: dict[str, Any]) -> bytes:
    envelope = {
        "event": event_type,
        "id": delivery_id,
        "occurredAt": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "attendee": attendee,
    }
    # msgspec writes Decimal as an exact string and Raw as the exact number text: no floats.
    return msgspec.json.encode(envelope)


def _delivery(rng: random.Random, occurrence: _Occurrence) -> SimulatedDelivery:
    delivery_id = _delivery_id(rng)
    return SimulatedDelivery(
        body=_body(occurrence.event_type, delivery_id, occurrence.at, occurrence.attendee),
        delivery_id=delivery_id,
        event_type=occurrence.event_type,
        attendee_id=occurrence.attendee["id"],
        expect="accepted",
    )


def _arrival(
    rng: random.Random,
    occurrences: list[_Occurrence],
    base: list[SimulatedDelivery],
    options: SimulationOptions,
) -> list[SimulatedDelivery]:
    """Occurrence order, then: late arrivals, retried duplicates, forged and unreadable extras."""
    count = len(base)
    slots: list[tuple[float, SimulatedDelivery]] = []
    late = set(rng.sample(range(count), round(options.out_of_order * count)))
    keys = [index + (_lag(rng, 12) + 0.5 if index in late else 0) for index in range(count)]
    slots += zip(keys, base, strict=True)
    for index in sorted(rng.sample(range(count), round(options.duplicates * count))):
        again = msgspec.structs.replace(base[index], expect="duplicate")
        slots.append((keys[index] + _lag(rng, 30) + 0.25, again))
    for _ in range(round(options.bad_signatures * count)):
        position = rng.randrange(count)
        slots.append((position - 0.75, _forged(rng, occurrences[position])))
    for kind in range(round(options.malformed * count)):
        position = rng.randrange(count)
        slots.append((position - 0.25, _malformed(rng, occurrences[position], kind)))
    order = sorted(range(len(slots)), key=lambda i: (slots[i][0], i))
    return [slots[i][1] for i in order]


def _lag(rng: random.Random, mean: float) -> int:
    """How many deliveries overtake a late one: mostly a few, now and then many."""
    return 1 + int(rng.expovariate(1 / mean))


def _forged(rng: random.Random, near: _Occurrence) -> SimulatedDelivery:
    """Someone who knows the URL but not the secret marks an attendee paid or checked in."""
    delivery_id = _delivery_id(rng)
    on_site = near.event_type in ("AttendeeCheckedIn", "AttendeeCheckedOut")
    event_type = "AttendeeCheckedIn" if on_site else "AttendeePaymentConfirmed"
    attendee: dict[str, Any] = {"id": near.attendee["id"]}
    if event_type == "AttendeePaymentConfirmed":
        reference = f"P24-{rng.randrange(10**10):010d}"
        attendee["payment"] = {
            "amount": "1299.99",
            "currency": "PLN",
            "method": "przelewy24",
            "reference": reference,
        }
    return SimulatedDelivery(
        body=_body(event_type, delivery_id, near.at, attendee),
        delivery_id=delivery_id,
        event_type=event_type,
        attendee_id=near.attendee["id"],
        expect="unauthorized",
        forged=True,
    )


def _malformed(rng: random.Random, near: _Occurrence, kind: int) -> SimulatedDelivery:
    """Verified but unreadable, in turn: truncated JSON, an unknown event type, no attendee id."""
    delivery_id = _delivery_id(rng)
    if kind % 3 == 0:
        text = _body(near.event_type, delivery_id, near.at, near.attendee).decode()
        # Cut after the delivery id, so that every truncated body is still unique; cutting
        # the text (not the bytes) keeps it valid UTF-8.
        cut = rng.randint(text.index(delivery_id) + len(delivery_id) + 1, len(text) - 1)
        body = text[:cut].encode()
    elif kind % 3 == 1:
        body = _body(rng.choice(_UNKNOWN_TYPES), delivery_id, near.at, near.attendee)
    else:
        attendee = {k: v for k, v in near.attendee.items() if k != "id"}
        body = _body(near.event_type, delivery_id, near.at, attendee or {"email": None})
    return SimulatedDelivery(
        body=body, delivery_id=delivery_id, event_type=None, attendee_id=None, expect="quarantined"
    )


# --- JSON lines -----------------------------------------------------------------------------


def write_jsonl(target: str | os.PathLike[str] | IO[str], signed: Sequence[SignedDelivery]) -> None:
    """Write one JSON object per line (a path, or an open text stream such as stdout)."""
    if isinstance(target, str | os.PathLike):
        with open(target, "w", encoding="utf-8") as stream:
            _write_lines(stream, signed)
    else:
        _write_lines(target, signed)


def _write_lines(stream: IO[str], signed: Iterable[SignedDelivery]) -> None:
    for delivery in signed:
        stream.write(msgspec.json.encode(delivery).decode() + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[SignedDelivery]:
    """Read what write_jsonl() wrote."""
    decoder = msgspec.json.Decoder(SignedDelivery)
    with open(path, encoding="utf-8") as stream:
        return [decoder.decode(line) for line in stream if line.strip()]
