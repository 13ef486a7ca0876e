"""Hostile requests generated from a seed, sent many at a time, and the tally of their
answers against what DESIGN allows."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Final

import msgspec

from projections.registry import VIEW_NAMES
from service.config import DEFAULT_HEADER_LIMIT, EventConfig
from service.jte.signing import sign
from service.jte.simulator import SimulationOptions, simulate
from tests.drill.harness import STANDARD_SLUG, Workspace
from tests.drill.wire import (
    NO_ANSWER,
    Answer,
    Headers,
    exchange,
    request,
    webhook_path,
    wire_headers,
)

ANY: Final[frozenset[int]] = frozenset()  # any answer but a 5xx
OK: Final = frozenset({200, 202})  # accepted, duplicate or quarantined
TOLERANCE: Final = 300  # seconds: Standard Webhooks' timestamp window (rollcall's default)


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """One hostile request: its exact bytes, the answers DESIGN allows (ANY: any but a 5xx;
    NO_ANSWER: closing without one), and the delivery in it if the drill signed it validly."""

    kind: str
    wire: bytes
    expect: frozenset[int] = ANY
    genuine: tuple[str, bytes] | None = None  # (slug, body)


class ApiFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the generator knows of the analyst API: tokens, real cursors, real attendee ids."""

    read: str
    admin: str
    cursors: tuple[str, ...]
    attendees: tuple[str, ...]


class _Sample(msgspec.Struct, frozen=True):
    event: EventConfig
    body: bytes
    delivery_id: str


_QUERY_NAMES: Final = (
    "limit", "cursor", "status", "role", "checked_in", "paid", "q", "format", "at", "bucket",
    "from", "to", "currency", "method",
)  # fmt: skip
_VALUES: Final = (
    "", "0", "1", "-1", "2", "50", "1000", "1001", "99999999999999999999", "1e3", "0x10",
    "%C2%B2", "%D9%A1%D9%A2", "+5", "%205", "true", "false", "yes", "TRUE", "null", "%00",
    "a%00b", "%zz", "%", "%ff%fe", "%ED%A0%80", "%F0%9F%98%80", "csv", "json", "xml",
    "registered", "deleted", "all", "unregistered", "speaker", "5m", "15m", "1h", "2h", "PLN",
    "eur", "payu", "2026-05-14T09:12:03Z", "2026-05-14", "2026-05-14T09:12:03%2B02:00",
    "0001-01-01T00:00:00%2B14:00", "9999-12-31T23:59:59-14:00", "10000-01-01",
    "1970-01-01T00:00:00Z", "1747200000", "1747200000000", "9999999999999999999",
    "-999999999999999999", "Ola", "%25", "%27%3B--", "%5C", "%2A", "_",
)  # fmt: skip
_ROUTES: Final = (
    "/v1/events", "/v1/events/{e}/roster", "/v1/events/{e}/attendees/{a}",
    "/v1/events/{e}/occupancy", "/v1/events/{e}/occupancy/timeline", "/v1/events/{e}/check-ins",
    "/v1/events/{e}/payments", "/v1/events/{e}/payments/summary", "/v1/projections",
)  # fmt: skip
_OPS: Final = (
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/dashboard", "/", "/favicon.ico",
    "/static/dashboard.js", "/static/../../etc/passwd", "/docs", "/v1", "/v2/events",
)  # fmt: skip
_JSON_TYPES: Final = (
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "application/vnd.jte+json", "application/cloudevents+json; charset=UTF-8",
    "application/json;charset=latin-1", "Application/Json ; q=1",
)  # fmt: skip
_OTHER_TYPES: Final = (
    "text/plain", "text/json", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
    "application/xml", "application/jsonx", "json", "application/", "*/*", "text/html",
    "application/octet-stream", "application/json-patch", "x/application/json", "",
)  # fmt: skip
_METHODS: Final = (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE")
_ODD_METHODS: Final = (
    b"FOO", b"post", b"POSTT", b"P0ST", b"PROPFIND", b"MKCOL", b"PURGE", b"SEARCH", b"LOCK",
)  # fmt: skip
_BAD_LINES: Final = (
    b"POST /webhooks/jte HTTP/1.1 extra", b"POST /webhooks/jte http/1.1",
    b"POST\t/webhooks/jte\tHTTP/1.1", b"POST /web hooks/jte HTTP/1.1",
    b"POST /webhooks/jte\x00 HTTP/1.1", b"POST webhooks/jte HTTP/1.1",
    b"POST /webhooks/jte HTTP/9.9", b"POST /webhooks/\xc3\xa9 HTTP/1.1",
    b"GET /v1/events?q=\xff HTTP/1.1", b"CONNECT 127.0.0.1:5432 HTTP/1.1", b"PRI * HTTP/2.0",
    b"GET /v1/\x7f HTTP/1.1", b" POST /webhooks/jte HTTP/1.1",
)  # fmt: skip
_BAD_HEADERS: Final = (
    b"NoColon", b"X-A : b", b"X-A: b\rc", b"X-A: b\x00c", b"X-A: b\x7fc", b"X-\x01A: b",
    b"X(A): b", b": b", b"X-\xffA: b", b"X-A: b\nX-B: c",
)  # fmt: skip
_FRAMING: Final = (
    b"Content-Length: 2\r\nTransfer-Encoding: chunked",
    b"Content-Length: 2\r\nContent-Length: 3", b"Content-Length: 2\r\nContent-Length: 2",
    b"Content-Length: 2, 2", b"Content-Length: -1", b"Content-Length: 0x10",
    b"Content-Length: 5 5", b"Content-Length: +2", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
)  # fmt: skip
_BAD_CHUNKS: Final = (b"zz\r\nab\r\n0\r\n\r\n", b"1" + b"0" * 20 + b"\r\nab\r\n", b"-1\r\n")


class Generator:
    """Hostile requests from a seed: the same seed gives the same requests (only signature
    timestamps follow the clock). Intake gets mutated signed deliveries and malformed HTTP;
    the analyst API gets random routes, parameters, cursors and tokens."""

    def __init__(self, seed: int, ws: Workspace, facts: ApiFacts, material: int = 600) -> None:
        self.rng = random.Random(seed)
        self.ws = ws
        self.facts = facts
        self.samples = _samples(ws.default, seed, material) + _samples(
            ws.standard, seed + 1, material
        )
        kinds: list[tuple[Callable[[], Probe], int]] = [
            (self.genuine, 6), (self.altered, 10), (self.token_altered, 3),
            (self.short_body, 1), (self.wrong_auth, 6), (self.doubled_auth, 3),
            (self.big_auth, 2), (self.content_type, 5), (self.method, 3), (self.path, 5),
            (self.unknown_type, 3), (self.nested, 1), (self.bad_utf8, 2),
            (self.garbage_body, 3), (self.odd_json, 4), (self.garbage_request, 2),
            (self.bad_request_line, 2), (self.bad_header, 3), (self.framing, 3),
            (self.chunked, 2), (self.huge_head, 1), (self.secret_path, 1),
            (self.api, 30), (self.api_method, 3), (self.api_path, 4), (self.ops, 3),
        ]  # fmt: skip
        self._makers = [maker for maker, _ in kinds]
        self._weights = [weight for _, weight in kinds]

    def probes(self, count: int) -> Iterator[Probe]:
        for _ in range(count):
            yield self.rng.choices(self._makers, self._weights)[0]()

    # Intake: deliveries --------------------------------------------------------------------

    def genuine(self) -> Probe:
        sample = self._sample()
        return self._post("genuine", sample, sample.body, self._signed(sample), OK, True)

    def altered(self) -> Probe:
        """One bit flipped, a byte changed, cut short or extended; the original signature."""
        sample = self._sample()
        body = self._alter(sample.body)
        return self._post("altered body", sample, body, self._signed(sample), frozenset({401}))

    def token_altered(self) -> Probe:
        """The secret itself proves the sender, not the bytes: an altered body is genuine."""
        sample = self._sample(self.ws.default)
        body = self._alter(sample.body)
        secret = sample.event.secrets[0].encode()
        auth = (
            (b"X-Webhook-Secret", secret)
            if self.rng.random() < 0.5
            else (b"Authorization", b"Bearer " + secret)
        )
        headers = [(b"Content-Type", b"application/json"), auth]
        return self._post("token, altered body", sample, body, headers, OK, True)

    def short_body(self) -> Probe:
        """Fewer bytes than Content-Length says: the body deadline must end the wait."""
        sample = self._sample()
        sent = sample.body[: self.rng.randrange(len(sample.body))]
        wire = request(
            b"POST",
            webhook_path(sample.event.slug),
            self._signed(sample),
            sent,
            length=len(sample.body),
        )
        expect = frozenset({408, NO_ANSWER})
        return Probe(kind="body shorter than declared", wire=wire, expect=expect)

    def wrong_auth(self) -> Probe:
        sample = self._sample()
        headers = self._signed(sample)
        forged = (
            self._forged_standard(sample, headers)
            if sample.event.mode == "standard-webhooks"
            else self._forged_default(sample, headers)
        )
        return self._post("wrong auth", sample, sample.body, forged, frozenset({401}))

    def doubled_auth(self) -> Probe:
        """The signature header twice, one good and one bad, in either order."""
        sample = self._sample()
        headers = self._signed(sample)
        name, value = headers[-1]
        bad = (name, self._garbage_token())
        pair = [(name, value), bad] if self.rng.random() < 0.5 else [bad, (name, value)]
        return self._post(
            "doubled auth", sample, sample.body, headers[:-1] + pair, OK | {401}, True
        )

    def big_auth(self) -> Probe:
        """An oversized signature: well under the header limit it is just wrong (401); well
        over it the request is refused (431) or cut off."""
        sample = self._sample()
        headers = self._signed(sample)
        large = self.rng.random() < 0.5
        size = (
            self.rng.randint(2, 8) * DEFAULT_HEADER_LIMIT
            if large
            else self.rng.randint(1000, DEFAULT_HEADER_LIMIT // 2)
        )
        headers[-1] = (headers[-1][0], b"sha256=" + b"a" * size)
        expect = frozenset({431, NO_ANSWER}) if large else frozenset({401})
        return self._post("oversized auth", sample, sample.body, headers, expect)

    def content_type(self) -> Probe:
        sample = self._sample()
        if self.rng.random() < 0.4:
            value = self.rng.choice(_JSON_TYPES)
        elif self.rng.random() < 0.7:
            value = self.rng.choice(_OTHER_TYPES)
        else:
            value = self._random_media_type()
        headers = [h for h in self._signed(sample) if h[0].lower() != b"content-type"]
        if value:
            headers.append((b"Content-Type", value.encode()))
        expect = OK if is_json_type(value) else frozenset({415})
        return self._post("content type", sample, sample.body, headers, expect, True)

    def method(self) -> Probe:
        sample = self._sample()
        if self.rng.random() < 0.6:
            method, expect = self.rng.choice(_METHODS), frozenset({405})
        else:
            method, expect = self.rng.choice(_ODD_METHODS), frozenset({400, 405})
        wire = request(method, webhook_path(sample.event.slug), self._signed(sample), sample.body)
        return Probe(kind="method", wire=wire, expect=expect, genuine=_carried(sample))

    def path(self) -> Probe:
        """Unknown JTE event slugs and odd paths; percent-encoded ones that decode to a real
        path are genuine."""
        sample = self._sample()
        choice = self.rng.random()
        if choice < 0.55:
            target, expect = b"/webhooks/jte/" + self._slug(), frozenset({404})
        elif choice < 0.75:
            target = self.rng.choice(
                [b"/webhooks/jte/", b"/webhooks/jte/a/b", b"/webhooks/jte//", b"/webhooks/jte/.."]
            )
            expect = frozenset({404})
        elif choice < 0.9:
            target = self.rng.choice([b"/webhooks/JTE", b"/webhooks/jtex", b"//webhooks/jte"])
            expect = frozenset({404, 405})
        else:
            target = webhook_path(sample.event.slug).replace(b"/w", b"/%77", 1)
            target += b"?" + self._query().encode()
            wire = request(b"POST", target, self._signed(sample), sample.body)
            return Probe(kind="encoded path", wire=wire, expect=OK, genuine=_carried(sample))
        wire = request(b"POST", target, self._signed(sample), sample.body)
        return Probe(kind="unknown path", wire=wire, expect=expect, genuine=_carried(sample))

    def unknown_type(self) -> Probe:
        """A JTE event type rollcall does not know, validly signed: kept, quarantined."""
        sample = self._sample()
        envelope = msgspec.json.decode(sample.body)
        envelope["id"] = self._fresh_id()  # a new delivery, not a duplicate of the sample
        envelope["event"] = self.rng.choice(
            ["AttendeeTeleported", "attendeeRegistered", "", "Attendee" + self._word(), "🎫"]
        )
        body = msgspec.json.encode(envelope)
        return self._signed_post("unknown event type", sample, body, frozenset({202}))

    def nested(self) -> Probe:
        """Nesting to 100k levels, under a fresh id: a new delivery, never a duplicate (the
        bare `[[[...]]]` is one of the named cases)."""
        sample = self._sample()
        depth = self.rng.choice([1_000, 10_000, 100_000])
        nesting = (
            b"[" * depth + b"]" * depth
            if self.rng.random() < 0.5
            else b'{"a":' * depth + b"1" + b"}" * depth
        )
        key = self.rng.choice([b"attendee", b"data", b"x"])
        envelope = b'{"event":"AttendeeRegistered","id":"%s","%s":' % (
            self._fresh_id().encode(),
            key,
        )
        body = envelope + nesting + b"}"
        return self._signed_post("deeply nested JSON", sample, body, frozenset({202}))

    def bad_utf8(self) -> Probe:
        sample = self._sample()
        body = bytearray(sample.body)
        for _ in range(self.rng.randint(1, 3)):
            body[self.rng.randrange(len(body))] = self.rng.choice([0xFF, 0xC3, 0x80, 0xED, 0xF8])
        return self._signed_post("invalid UTF-8", sample, bytes(body), OK)

    def garbage_body(self) -> Probe:
        sample = self._sample()
        # 16 bytes at least: random ones never repeat, so every signed one is a new delivery.
        body = self.rng.randbytes(self.rng.choice([16, 1000, 100_000]))
        if self.rng.random() < 0.5:
            return self._signed_post("garbage body, signed", sample, body, frozenset({202}))
        headers = [(b"Content-Type", b"application/json"), (b"X-Webhook-Signature", b"x")]
        return self._post("garbage body", sample, body, headers, frozenset({401}))

    def odd_json(self) -> Probe:
        """Valid or nearly valid JSON of every odd shape, validly signed: accepted or kept."""
        sample = self._sample()
        tag = self.rng.randrange(10**12)
        body = self.rng.choice(_odd_bodies(tag))
        return self._signed_post("odd JSON", sample, body, OK)

    def chunked(self) -> Probe:
        """A genuine delivery sent in chunks of random sizes, without Content-Length."""
        sample = self._sample()
        body, chunks = sample.body, bytearray()
        while body:
            size = self.rng.randint(1, 200)
            chunks += b"%x\r\n" % len(body[:size]) + body[:size] + b"\r\n"
            body = body[size:]
        headers = [*self._signed(sample), (b"Transfer-Encoding", b"chunked")]
        wire = request(
            b"POST",
            webhook_path(sample.event.slug),
            headers,
            bytes(chunks) + b"0\r\n\r\n",
            length=-1,
        )
        return Probe(kind="chunked", wire=wire, expect=OK, genuine=_carried(sample))

    def secret_path(self) -> Probe:
        """The webhook secret pasted as the slug: 404, and it must not reach the logs."""
        sample = self._sample(self.ws.default)
        target = b"/webhooks/jte/" + sample.event.secrets[0].encode()
        wire = request(b"POST", target, self._signed(sample), sample.body)
        return Probe(
            kind="secret as slug", wire=wire, expect=frozenset({404}), genuine=_carried(sample)
        )

    # Intake: broken HTTP -------------------------------------------------------------------

    def garbage_request(self) -> Probe:
        data = self.rng.randbytes(self.rng.choice([1, 10, 200, 5000]))
        return Probe(kind="garbage bytes", wire=data, expect=frozenset({400, NO_ANSWER}))

    def bad_request_line(self) -> Probe:
        line = self.rng.choice(_BAD_LINES)
        wire = line + b"\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        return Probe(kind="bad request line", wire=wire, expect=frozenset({400}))

    def bad_header(self) -> Probe:
        sample = self._sample()
        headers = self._signed(sample)
        wire = request(b"POST", webhook_path(sample.event.slug), headers, sample.body)
        head, _, body = wire.partition(b"\r\n\r\n")
        bad = self.rng.choice(_BAD_HEADERS)
        wire = head + b"\r\n" + bad + b"\r\n\r\n" + body
        return Probe(
            kind="invalid header bytes",
            wire=wire,
            expect=frozenset({400}),
            genuine=_carried(sample),
        )

    def framing(self) -> Probe:
        """Request smuggling shapes: conflicting or malformed lengths and codings."""
        sample = self._sample()
        head = request(b"POST", webhook_path(sample.event.slug), self._signed(sample), length=-1)
        if self.rng.random() < 0.75:
            framing = self.rng.choice(_FRAMING)
            wire = head[:-2] + framing + b"\r\n\r\n{}x"
            expect = frozenset({400, 401})  # RFC 9112: refuse, or read by Transfer-Encoding
        else:
            wire = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n" + self.rng.choice(_BAD_CHUNKS)
            expect = frozenset({400})
        return Probe(kind="framing", wire=wire, expect=expect)

    def huge_head(self) -> Probe:
        """About 1 MB of headers: one huge one, or thousands of small ones."""
        sample = self._sample()
        if self.rng.random() < 0.5:
            extra = [(b"X-Padding", b"p" * 1_000_000)]
        else:
            extra = [(b"X-P%d" % i, b"p" * 40) for i in range(20_000)]
        headers = self._signed(sample) + extra
        wire = request(b"POST", webhook_path(sample.event.slug), headers, sample.body)
        expect = frozenset({431, NO_ANSWER})
        return Probe(kind="huge headers", wire=wire, expect=expect, genuine=_carried(sample))

    # The analyst API -----------------------------------------------------------------------

    def api(self) -> Probe:
        route = self.rng.choice(_ROUTES)
        target = route.replace("{e}", self._event()).replace("{a}", self._attendee())
        if self.rng.random() < 0.8:
            target += "?" + self._query()
        headers, valid = self._token()
        if self.rng.random() < 0.2:
            headers.append((b"Accept", self.rng.choice([b"text/csv", b"*/*", b"text/csv;q=0"])))
        return self._api_probe("api query", b"GET", target, headers, valid)

    def api_method(self) -> Probe:
        if self.rng.random() < 0.3:
            name = self.rng.choice([*VIEW_NAMES, "all", self._word()])
            target = f"/v1/projections/{name}/rebuild"
            method = b"POST"
        else:
            target = self.rng.choice(_ROUTES).replace("{e}", "default").replace("{a}", "x")
            method = self.rng.choice([*_METHODS, b"POST"])
        headers, valid = self._token()
        return self._api_probe("api method", method, target, headers, valid)

    def api_path(self) -> Probe:
        target = self.rng.choice(
            [
                "/v1/events/" + self._word() * self.rng.randint(1, 500),
                "/v1/events/default/" + self._word(),
                "/v1/events//roster",
                "/v1/events/default/roster/",
                "/v1/events/default/attendees/",
                "/v1/events/default/attendees/" + "%2F" * self.rng.randint(1, 5),
                "/v1/" + self._word(),
                "/v1/events/%2e%2e/roster",
            ]
        )
        headers, valid = self._token()
        return self._api_probe("api path", b"GET", target, headers, valid)

    def ops(self) -> Probe:
        target = self.rng.choice(_OPS)
        if self.rng.random() < 0.5:
            target += "?" + self._query()
        method = b"GET" if self.rng.random() < 0.8 else self.rng.choice(_METHODS)
        headers, _ = self._token()
        wire = request(method, target.encode(), headers)
        return Probe(kind="operator routes", wire=wire)

    def _api_probe(
        self, kind: str, method: bytes, target: str, headers: Headers, valid: bool | None
    ) -> Probe:
        # Without a valid token nothing may be served: 401, or the router's own 404 (a trailing
        # slash included: paths are exact, never redirected) or 405.
        expect = ANY if valid is not False else frozenset({401, 404, 405})
        wire = request(method, target.encode(), headers)
        return Probe(kind=kind, wire=wire, expect=expect)

    def _token(self) -> tuple[Headers, bool | None]:
        """Authorization headers and whether they hold a valid token (None: it depends)."""
        r, read = self.rng.random(), self.facts.read.encode()
        if r < 0.45:
            return [(b"Authorization", b"Bearer " + read)], True
        if r < 0.5:
            return [(b"Authorization", b"Bearer " + self.facts.admin.encode())], True
        if r < 0.55:
            return [(b"Authorization", b"bearer " + read)], True
        if r < 0.6:
            return [(b"Authorization", b"Bearer " + read), (b"Authorization", b"Bearer x")], None
        secret = self.ws.default.secrets[0].encode()
        forged = self.rng.choice(
            [
                b"",
                b"Bearer",
                b"Bearer ",
                b"Bearer rc_" + self._word().encode(),
                b"Bearer " + read + b"x",
                b"Bearer " + read[:-1],
                b"Basic " + base64.b64encode(b"analyst:" + read),
                b"Bearer " + secret,
                b"Token " + read,
                b"Bearer " + b"rc_" + b"A" * 10_000,
                read,
            ]
        )
        return ([(b"Authorization", forged)] if forged else []), False

    def _query(self) -> str:
        pairs = []
        for _ in range(self.rng.randint(0, 4)):
            name = self.rng.choice(_QUERY_NAMES) if self.rng.random() < 0.85 else self._word()
            pairs.append(f"{name}={self._value()}")
        return "&".join(pairs)

    def _value(self) -> str:
        r = self.rng.random()
        if r < 0.15:
            return self._cursor()
        if r < 0.2:
            return "a" * self.rng.randint(200, 3000)
        if r < 0.25 and self.facts.attendees:
            return self.rng.choice(self.facts.attendees)
        return self.rng.choice(_VALUES)

    def _cursor(self) -> str:
        """Real cursors, tampered ones, and base64 of the wrong JSON."""
        if self.facts.cursors and self.rng.random() < 0.3:
            real = self.rng.choice(self.facts.cursors)
            if self.rng.random() < 0.5:
                return real
            i = self.rng.randrange(len(real))
            return real[:i] + self.rng.choice("AbZz09-_") + real[i + 1 :]
        shape = self.rng.choice(
            [
                ["a", "b", "c"], ["\u0000", "a", "b"], ["a", "\u0000"], [1, 2, 3], ["x"], {},
                ["2026-05-14T09:12:03Z", "x"], ["0001-01-01T00:00:00+14:00", "x"],
                ["9999-12-31T23:59:59.999999Z", "\u0000"], ["", "", ""], ["ab" * 500, "x", "y"],
            ]
        )  # fmt: skip
        if self.rng.random() < 0.2:
            return self.rng.choice(["!!!", "====", "", "%00", "a" * 5000])
        return base64.urlsafe_b64encode(msgspec.json.encode(shape)).decode().rstrip("=")

    def _event(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return "default"
        if r < 0.8:
            return STANDARD_SLUG
        return self._slug().decode()

    def _attendee(self) -> str:
        if self.facts.attendees and self.rng.random() < 0.5:
            return self.rng.choice(self.facts.attendees)
        return self.rng.choice(
            [self._word(), "%00", "a" * 300, "%ff%fe", "..", "%2e%2e%2fx", "%F0%9F%8E%AB"]
        )

    # Pieces -------------------------------------------------------------------------------

    def _sample(self, event: EventConfig | None = None) -> _Sample:
        while True:
            sample = self.rng.choice(self.samples)
            if event is None or sample.event.slug == event.slug:
                return sample

    def _signed(
        self, sample: _Sample, body: bytes | None = None, now: float | None = None
    ) -> Headers:
        values = sign(
            sample.event,
            sample.body if body is None else body,
            now=time.time() if now is None else now,
            delivery_id=sample.delivery_id,
        )
        return wire_headers(values)

    def _post(
        self,
        kind: str,
        sample: _Sample,
        body: bytes,
        headers: Headers,
        expect: frozenset[int],
        genuine: bool = False,
    ) -> Probe:
        wire = request(b"POST", webhook_path(sample.event.slug), headers, body)
        carried = (sample.event.slug, body) if genuine else None  # signed validly
        return Probe(kind=kind, wire=wire, expect=expect, genuine=carried)

    def _signed_post(
        self, kind: str, sample: _Sample, body: bytes, expect: frozenset[int]
    ) -> Probe:
        """`body` validly signed under a delivery id of its own (Standard Webhooks falls back
        to webhook-id when the body has none: the sample's would make it a duplicate)."""
        sample = msgspec.structs.replace(sample, delivery_id=self._fresh_id())
        return self._post(kind, sample, body, self._signed(sample, body), expect, True)

    def _fresh_id(self) -> str:
        return f"hostile-{self.rng.randrange(10**15)}"

    def _alter(self, body: bytes) -> bytes:
        changed = bytearray(body)
        r = self.rng.random()
        if r < 0.4:
            i = self.rng.randrange(len(changed))
            changed[i] ^= 1 << self.rng.randrange(8)
        elif r < 0.7:
            i = self.rng.randrange(len(changed))
            changed[i] = (changed[i] + self.rng.randint(1, 255)) % 256
        elif r < 0.85:
            del changed[self.rng.randrange(len(changed)) :]
        else:
            changed += self.rng.choice([b" ", b"\n", b"{}", b"\x00", self.rng.randbytes(8)])
        return bytes(changed)

    def _forged_default(self, sample: _Sample, headers: Headers) -> Headers:
        secret = sample.event.secrets[0].encode()
        wrong = self.rng.choice([secret + b"x", secret[:-1], b"x" + secret, b"", b"wrong"])
        digest = hmac.new(wrong, sample.body, hashlib.sha256).hexdigest().encode()
        return self.rng.choice(
            [
                [(b"Content-Type", b"application/json")],
                [(b"Content-Type", b"application/json"), (b"X-Webhook-Signature", b"")],
                [(b"Content-Type", b"application/json"), (b"X-Webhook-Signature", digest)],
                [(b"Content-Type", b"application/json"), (b"X-Webhook-Secret", wrong)],
                [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer " + wrong)],
                [headers[0], (headers[1][0], headers[1][1][:-3])],
                [headers[0], (headers[1][0], self._garbage_token())],
            ]
        )

    def _forged_standard(self, sample: _Sample, headers: Headers) -> Headers:
        r = self.rng.random()
        if r < 0.3:  # signed with the right secret, but outside the timestamp window
            skew = self.rng.choice([-1, 1]) * self.rng.randint(TOLERANCE + 5, 10 * TOLERANCE)
            return self._signed(sample, now=time.time() + skew)
        named = dict(headers)
        if r < 0.45:
            named[b"webhook-id"] = b"replayed-" + named[b"webhook-id"]
        elif r < 0.6:
            named[b"webhook-timestamp"] = str(int(time.time()) - 1).encode()
        elif r < 0.7:
            named[b"webhook-signature"] = named[b"webhook-signature"].replace(b"v1,", b"v2,")
        elif r < 0.8:
            del named[b"webhook-id"]
        elif r < 0.9:
            named[b"webhook-timestamp"] = self.rng.choice([b"", b"-1", b"1e9", b"99999999999999"])
        else:
            named[b"webhook-signature"] = b"v1," + base64.b64encode(self.rng.randbytes(32))
        return list(named.items())

    def _garbage_token(self) -> bytes:
        alphabet = b"abcdefABCDEF0123456789+/=,;: sha256v1"
        return bytes(self.rng.choice(alphabet) for _ in range(self.rng.randint(1, 90))).strip()

    def _random_media_type(self) -> str:
        value = f"{self._word()}/{self._word()}"
        if self.rng.random() < 0.3:
            value = f"application/{self._word()}+json"
        if self.rng.random() < 0.3:
            value += f"; {self._word()}={self._word()}"
        return value

    def _slug(self) -> bytes:
        slug = self.rng.choice(
            [self._word(), "%00", "%2e%2e", "%ff", "%2F", "x" * 5000, "sw-conf2", "Default"]
        )
        return slug.encode()

    def _word(self) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz0123456789-_"
        return "".join(self.rng.choice(letters) for _ in range(self.rng.randint(1, 12)))


def _carried(sample: _Sample) -> tuple[str, bytes]:
    """The delivery a validly signed request carries, whatever the answer must be."""
    return sample.event.slug, sample.body


def is_json_type(value: str) -> bool:
    """DESIGN's rule: application/json or application/*+json (a missing type is not JSON)."""
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/")
        and media.endswith("+json")
        and len(media) > len("application/+json")
    )


def _samples(event: EventConfig, seed: int, count: int) -> list[_Sample]:
    day = simulate(SimulationOptions(seed=seed, attendees=max(10, count // 3 + 10)))
    return [_Sample(event, d.body, d.delivery_id) for d in day[:count]]


def _odd_bodies(tag: int) -> list[bytes]:
    """Odd shapes; each carries `tag` where it can, so that accepted ones are new deliveries."""
    attendee = b'{"id":"odd-%d"}' % tag
    envelope = b'{"event":"AttendeeCheckedIn","id":"odd-%d",' % tag
    return [
        b"{}", b"[]", b"null", b"0", b'"x"', b"", b" ", b"\xef\xbb\xbf{}",
        b'{"event":null,"id":"odd-%d"}' % tag,
        envelope + b'"attendee":{}}',
        envelope + b'"attendee":{"id":""}}',
        envelope + b'"attendee":{"id":%d}}' % tag,
        envelope + b'"attendee":{"id":1e999999}}',
        envelope + b'"attendee":{"id":"' + b"a" * 300 + b'"}}',
        envelope + b'"attendee":{"id":"a\\u0000b"}}',
        envelope + b'"attendee":{"id":"\\ud800"}}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":"0001-01-01T00:00:00+14:00"}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":"9999-12-31T23:59:59-14:00"}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":1e400}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":-99999999999999999999}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":"9999-12-31T23:59:59.999999Z"}',
        envelope + b'"attendee":' + attendee + b',"occurredAt":true}',
        envelope + b'"attendee":' + attendee + b',"event":"AttendeeDeleted"}',
        envelope + b'"attendee":' + attendee + b",}",
        envelope + b'"attendee":' + attendee + b"} trailing",
        envelope + b'"attendee":' + attendee + b",NaN:1}",
        b'{"event":"AttendeePaymentConfirmed","id":"odd-%d","attendee":{"id":"odd-%d",'
        b'"payment":{"amount":"1e999999","currency":"P\\u0000LN","reference":"r"}}}' % (tag, tag),
        b'{"type":"AttendeeRegistered","deliveryId":"odd-%d","data":{"attendee":%s}}'
        % (tag, attendee),
    ]  # fmt: skip


# --- Running the generated requests ---------------------------------------------------------


class Tally:
    """Every answer of the hostile scenario, and what it means for the promises."""

    def __init__(self) -> None:
        self.sent = 0
        self.api = 0  # of them, to the analyst API
        self.statuses: Counter[int] = Counter()
        self.server_errors: Counter[str] = Counter()  # "kind: status body"
        self.overloaded = 0
        self.hangs: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()  # "kind answered status"
        self.genuine: set[tuple[str, bytes]] = set()  # (slug, body) sent validly signed
        self.acknowledged: set[tuple[str, bytes]] = set()  # ... and answered as stored
        self.stored_answers = 0  # 200 accepted + 202 quarantined
        self.unsigned_stored = 0  # of those, requests the drill had not signed validly
        self.slowest = 0.0

    def add(self, probe: Probe, answer: Answer) -> None:
        self.sent += 1
        self.api += probe.kind.startswith("api")
        self.statuses[answer.status] += 1
        self.slowest = max(self.slowest, answer.seconds)
        if probe.genuine is not None:
            self.genuine.add(probe.genuine)
        if answer.hung:
            self.hangs[probe.kind] += 1
        elif answer.status == 503 and (
            answer.body == b"Service Unavailable" or b'"too_many_exports"' in answer.body
        ):
            # uvicorn's connection cap, or every export connection busy: the service says it
            # is full, as documented
            self.overloaded += 1
        elif answer.status >= 500:
            self.server_errors[f"{probe.kind}: {answer.status} {answer.body[:120]!r}"] += 1
        elif probe.expect and answer.status not in probe.expect:
            self.unexpected[f"{probe.kind} answered {answer.status or 'nothing'}"] += 1
        if stored_answer(answer):
            self.stored_answers += 1
            if probe.genuine is not None:
                self.acknowledged.add(probe.genuine)
            else:
                self.unsigned_stored += 1


def stored_answer(answer: Answer) -> bool:
    # Intake's own JSON, exactly: other answers (/metrics, say) may mention the words.
    return (answer.status == 200 and answer.body.startswith(b'{"status":"accepted"')) or (
        answer.status == 202 and answer.body.startswith(b'{"status":"quarantined"')
    )


async def fire(port: int, probes: Iterator[Probe], tally: Tally, connections: int) -> float:
    """Send every probe, `connections` at a time; seconds taken."""
    started = time.monotonic()

    async def worker() -> None:
        for probe in probes:  # one shared iterator: the generator's order stays the seed's
            tally.add(probe, await exchange(port, probe.wire))

    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.monotonic() - started
