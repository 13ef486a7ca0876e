"""The dashboard: its files over HTTP (httpx), and the page itself in a real headless Chromium.

The browser tests seed a JTE event through the real HTTP intake with numbers known here, sign in
through the page's form with a read token, and read the numbers off the page. They need Debian's
`chromium` at /usr/bin/chromium (Playwright drives it; no browser is ever downloaded): without
it they are skipped, unless ROLLCALL_REQUIRE_BROWSER=1 (as CI sets), when they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright, expect

from service.config import EventConfig
from service.http.api import day
from service.http.dashboard import STATIC
from tests.drill.snapshot import wait_until_caught_up
from tests.helpers import (
    SECRET,
    RunningService,
    api_token,
    bearer,
    jte_headers,
    token_headers,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 15_000  # generous: CI shares two cores between PostgreSQL, rollcall and Chromium
# The browser's zone, and spring-conf's: 09:40Z shows as 11:40 (CEST) on 2026-05-14.
TIME_ZONE = "Europe/Warsaw"

EVENTS = {
    "default": EventConfig(slug="default", secrets=(SECRET,)),
    "spring-conf": EventConfig(slug="spring-conf", secrets=(SECRET,), timezone=TIME_ZONE),
}
PEOPLE = {
    "a-1": ("Ola", "Nowak"),
    "a-2": ("Jan", "Kowalski"),
    "a-3": ("Anna", "Wiśniewska"),
    "a-4": ("Piotr", "Zieliński"),
    "a-5": ("Ewa", "Wójcik"),
}


# ---- the files, over plain HTTP -----------------------------------------------------------


async def test_page_and_assets_are_served_with_their_types_and_policy(
    service: RunningService,
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        page = await client.get("/dashboard")  # no token: the page holds no data
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe" not in policy
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        html = page.text
        assert '<form id="login-form"' in html
        # All script in dashboard.js; every referenced file is rollcall's own (no CDN).
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
        referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sorted(referenced) == [
            "dashboard/dashboard.css",
            "dashboard/dashboard.js",
            "dashboard/favicon.svg",
        ]

        expected = {
            "dashboard.js": "text/javascript; charset=utf-8",
            "dashboard.css": "text/css; charset=utf-8",
            "favicon.svg": "image/svg+xml",
        }
        for name, content_type in expected.items():
            answer = await client.get(f"/dashboard/{name}")
            assert answer.status_code == 200, name
            assert answer.headers["content-type"] == content_type
            assert answer.headers["cache-control"] == "no-cache"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.content == (STATIC / name).read_bytes()
            etag = answer.headers["etag"]
            again = await client.get(f"/dashboard/{name}", headers={"if-none-match": etag})
            assert again.status_code == 304 and again.content == b""
        css = (await client.get("/dashboard/dashboard.css")).text
        assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)
        js = (await client.get("/dashboard/dashboard.js")).text
        assert not re.search(r"fetch\(\s*['\"`](https?:)?//", js)

        head = await client.head("/dashboard")
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")

        openapi = (await client.get("/openapi.json")).json()
        assert "text/html" in openapi["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/nope.js",
        "/dashboard/dashboard.html",  # the page is /dashboard itself
        "/dashboard/..%2Fdashboard.py",
        "/dashboard/%2E%2E%2F%2E%2E%2Fpyproject.toml",
        "/dashboard/static%2Fdashboard.js",
        "/dashboard/DASHBOARD.JS",
        "/dashboard/a/b",
    ],
)
async def test_unknown_assets_are_404_json(service: RunningService, path: str) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        answer = await client.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == "not_found"


# ---- the page, in Chromium ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    """Debian's Chromium; without it the browser tests skip, or fail where CI requires them."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium): browser tests not run"
        if os.environ.get("ROLLCALL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ROLLCALL_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    """Chromium, headless, driven by Playwright (never a browser Playwright downloads)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium_path), args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Watched:
    """A page in a fresh context, with everything it logs and requests collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[ConsoleMessage] = []
        self.errors: list[Error] = []
        self.requests: list[str] = []
        page.on("console", lambda message: self.console.append(message))
        page.on("pageerror", lambda error: self.errors.append(error))
        page.on("request", lambda request: self.requests.append(request.url))

    def console_errors(self) -> list[str]:
        return [f"{m.text} ({m.location})" for m in self.console if m.type == "error"]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Callable[[], Awaitable[Watched]]]:
    contexts = []

    async def open_() -> Watched:
        context = await browser.new_context(
            timezone_id=TIME_ZONE, locale="en-GB", viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return Watched(await context.new_page())

    yield open_
    for context in contexts:
        await context.close()


def jte(event: str, attendee_id: str, delivery_id: str, at: str, **attendee: Any) -> bytes:
    first, last = PEOPLE[attendee_id]
    body = {
        "event": event,
        "id": delivery_id,
        "occurredAt": at,
        "attendee": {
            "id": attendee_id,
            "email": f"{first.lower()}@example.com",
            "firstName": first,
            "lastName": last,
            **attendee,
        },
    }
    return json.dumps(body).encode()


def paid(amount: str, currency: str, method: str, reference: str) -> dict[str, Any]:
    return {
        "payment": {
            "amount": amount,
            "currency": currency,
            "method": method,
            "reference": reference,
        }
    }


# 5 registered; 349.00 PLN (199.00 by Przelewy24 + 150.00 by PayU) and 100.50 EUR by bank
# transfer; Ola, Jan and Anna check in, Jan leaves: 2 inside now, peak 3 at 09:40:12Z.
SEED = [
    *(
        jte("AttendeeRegistered", aid, f"reg-{aid}", f"2026-05-0{n}T08:00:00Z")
        for n, aid in enumerate(PEOPLE, start=1)
    ),
    jte(
        "AttendeePaymentConfirmed", "a-1", "pay-1", "2026-05-06T10:00:00Z",
        **paid("199.00", "PLN", "przelewy24", "P24-1"),
    ),
    jte(
        "AttendeePaymentConfirmed", "a-2", "pay-2", "2026-05-06T11:00:00Z",
        **paid("150.00", "PLN", "payu", "PAYU-2"),
    ),
    jte(
        "AttendeePaymentConfirmed", "a-3", "pay-3", "2026-05-07T09:00:00Z",
        **paid("100.50", "EUR", "bank transfer", "BT-3"),
    ),
    jte("AttendeeCheckedIn", "a-1", "in-1", "2026-05-14T09:05:00Z"),
    jte("AttendeeCheckedIn", "a-2", "in-2", "2026-05-14T09:20:00Z"),
    jte("AttendeeCheckedIn", "a-3", "in-3", "2026-05-14T09:40:12Z"),
    jte("AttendeeCheckedOut", "a-2", "out-2", "2026-05-14T10:10:00Z"),
]  # fmt: skip


async def seed(service: RunningService, bodies: list[bytes], slug: str = "spring-conf") -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        for body in bodies:
            answer = await client.post(
                f"/webhooks/jte/{slug}", content=body, headers=token_headers()
            )
            assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/dashboard")
    await expect(page.locator("#login-form")).to_be_visible()
    await page.locator("#token").fill(token)
    await page.locator("#login-submit").click()


async def test_dashboard_shows_a_seeded_event_live(
    open_page: Callable[[], Awaitable[Watched]],  # first: no browser, skip before starting
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    service = start_service(events=EVENTS)
    await seed(service, SEED)
    wait_until_caught_up(database_url)
    token = api_token(database_url, "read")
    async with httpx.AsyncClient(base_url=service.url, headers=bearer(token)) as client:
        api_peak_at = (await client.get("/v1/events/spring-conf/occupancy")).json()["peak_at"]
    assert api_peak_at == "2026-05-14T09:40:12Z"

    watched = await open_page()
    page = watched.page
    try:
        await sign_in(page, service.url, token)
        await expect(page.locator("#board")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#login")).to_be_hidden()
        # Two events are configured: the first (default, empty) is shown; pick spring-conf.
        await expect(page.locator("#registered")).to_have_text("0", timeout=WAIT_MS)
        await expect(page.locator("#paid")).to_have_text("No payments yet")
        await page.locator("#event").select_option("spring-conf")

        await expect(page.locator("#registered")).to_have_text("5", timeout=WAIT_MS)
        await expect(page.locator("#inside")).to_have_text("2", timeout=WAIT_MS)
        await expect(page.locator("#peak")).to_have_text("3", timeout=WAIT_MS)
        peak_time = page.locator("#peak-at time")
        await expect(peak_time).to_have_text("2026-05-14 11:40")  # local time: Warsaw, CEST
        await expect(peak_time).to_have_attribute("title", api_peak_at)

        totals = page.locator("#paid li")
        await expect(totals).to_have_count(2)
        await expect(page.locator('#paid li[data-currency="PLN"] .amount')).to_have_text("349.00")
        await expect(page.locator('#paid li[data-currency="EUR"] .amount')).to_have_text("100.50")
        await expect(page.locator('#paid li[data-currency="PLN"]')).to_contain_text("2 payments")

        payments = page.locator("#payments tbody tr")
        await expect(payments).to_have_count(3)
        assert [await row.inner_text() for row in await payments.all()] == [
            "Bank transfer\tEUR\t1\t100.50",
            "PayU\tPLN\t1\t150.00",
            "Przelewy24\tPLN\t1\t199.00",
        ]

        check_ins = page.locator("#checkins tbody tr")
        await expect(check_ins).to_have_count(3)
        await expect(check_ins.locator("td.name")).to_have_text(
            ["Anna Wiśniewska", "Jan Kowalski", "Ola Nowak"]
        )
        await expect(check_ins.locator(".badge")).to_have_text(["inside", "left", "inside"])
        first_time = check_ins.first.locator("time")
        await expect(first_time).to_have_text("2026-05-14 11:40")
        await expect(first_time).to_have_attribute("title", "2026-05-14T09:40:12Z")

        # 5-minute buckets around the day's activity: inside at each bucket's end.
        for end, inside in [("09:10", "1"), ("09:25", "2"), ("09:45", "3"), ("10:15", "2")]:
            point = page.locator(f'#chart svg circle.point[data-end="2026-05-14T{end}:00Z"]')
            await expect(point).to_have_attribute("data-inside", inside)
        await expect(page.locator("#chart svg polyline.line")).to_have_count(1)

        # Live: a new check-in shows up on its own within a refresh or two.
        await seed(service, [jte("AttendeeCheckedIn", "a-4", "in-4", "2026-05-14T10:20:00Z")])
        await expect(page.locator("#inside")).to_have_text("3", timeout=WAIT_MS)
        await expect(check_ins.locator("td.name").first).to_have_text(
            "Piotr Zieliński", timeout=WAIT_MS
        )
        await expect(page.locator("#status")).to_contain_text("updated")

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

        # A failed view shows in the status line (readiness does not report it).
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE rollcall.view_versions SET failed_at = now(), last_error = 'boom' "
                "WHERE view = 'payments' AND state = 'live'"
            )
        status = page.locator("#status")
        await expect(status).to_contain_text("View payments failed", timeout=WAIT_MS)
        await expect(status).to_have_class(re.compile(r"\bstale\b"))
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE rollcall.view_versions SET failed_at = NULL, last_error = NULL")
        await expect(status).to_contain_text("Live", timeout=WAIT_MS)

        # The token lives in the tab: a reload needs no new sign-in, and the event is kept.
        await page.reload()
        await expect(page.locator("#registered")).to_have_text("5", timeout=WAIT_MS)
        await expect(page.locator("#login")).to_be_hidden()
        await page.locator("#logout").click()
        await expect(page.locator("#login-form")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('rollcall.token')") is None
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "dashboard-failure.png", full_page=True)
        raise

    assert watched.console_errors() == []
    assert [str(error) for error in watched.errors] == []
    foreign = [url for url in watched.requests if not url.startswith(service.url + "/")]
    assert foreign == [], "everything the page needs comes from rollcall itself"


async def test_a_wrong_token_leads_back_to_the_login_form(
    open_page: Callable[[], Awaitable[Watched]],  # first: no browser, skip before starting
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    service = start_service()
    watched = await open_page()
    page = watched.page
    await sign_in(page, service.url, "rc_this-is-not-a-token")

    message = page.locator("#login-message")
    await expect(message).to_be_visible(timeout=WAIT_MS)
    await expect(message).to_contain_text("not accepted")
    await expect(message).to_contain_text("the API token is not valid")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#board")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('rollcall.token')") is None
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "dashboard-login.png")

    # The only errors are the browser's own notes about the refused request.
    assert [str(error) for error in watched.errors] == []
    for text in watched.console_errors():
        assert "401" in text, text

    # A good token then gets in.
    await page.locator("#token").fill(api_token(database_url, "read"))
    await page.locator("#login-submit").click()
    await expect(page.locator("#board")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#registered")).to_have_text("0", timeout=WAIT_MS)
    await expect(page.locator("#login-message")).to_be_hidden()


async def test_days_and_times_are_the_events_own_whatever_the_browsers_zone(
    browser: Browser,
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    # A Warsaw event seen from a browser in Tokyo: an evening check-in at 23:45 in Warsaw
    # (21:45Z) is on 14 May, one at 00:15 (22:15Z) on 15 May, though both are 14 May in UTC
    # and 15 May in Tokyo.
    service = start_service(events={"spring-conf": EVENTS["spring-conf"]})
    await seed(
        service,
        [
            jte("AttendeeRegistered", "a-1", "reg-1", "2026-05-01T08:00:00Z"),
            jte("AttendeeRegistered", "a-2", "reg-2", "2026-05-01T08:00:00Z"),
            jte("AttendeeCheckedIn", "a-1", "in-1", "2026-05-14T21:45:00Z"),
            jte("AttendeeCheckedIn", "a-2", "in-2", "2026-05-14T22:15:00Z"),
        ],
    )
    wait_until_caught_up(database_url)
    token = api_token(database_url, "read")
    async with httpx.AsyncClient(base_url=service.url, headers=bearer(token)) as client:
        listed = (await client.get("/v1/events")).json()["events"]
    assert [(e["event"], e["timezone"]) for e in listed] == [("spring-conf", "Europe/Warsaw")]

    context = await browser.new_context(
        timezone_id="Asia/Tokyo", locale="en-GB", viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[Error] = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        await sign_in(page, service.url, token)
        await expect(page.locator("#zone")).to_have_text("Europe/Warsaw", timeout=WAIT_MS)
        days = page.locator("#day option")
        await expect(days).to_have_text(["2026-05-15 (latest)", "2026-05-14"])
        sub = page.locator("#inside-sub")
        await expect(sub).to_have_text("1 entry · 0 exits this day")
        point = page.locator('#chart svg circle.point[data-end="2026-05-14T22:20:00Z"]')
        await expect(point).to_have_attribute("data-inside", "1")
        times = page.locator("#checkins tbody tr time")
        await expect(times).to_have_text(["2026-05-15 00:15", "2026-05-14 23:45"])

        await page.locator("#day").select_option("2026-05-14")
        await expect(sub).to_have_text("1 entry · 0 exits this day", timeout=WAIT_MS)
        point = page.locator('#chart svg circle.point[data-end="2026-05-14T21:50:00Z"]')
        await expect(point).to_have_attribute("data-inside", "1", timeout=WAIT_MS)
        # The day ends at Warsaw's midnight (22:00Z): the 00:15 check-in is not in it.
        late = page.locator('#chart svg circle.point[data-end="2026-05-14T22:20:00Z"]')
        await expect(late).to_have_count(0)
    finally:
        await context.close()
    assert [str(error) for error in errors] == []


# A second, small day: a-4 and a-5 come on 2026-11-30, a-5 leaves; a-1 and a-3 never checked
# out on 2026-05-14 and must not count as inside on the second day.
SECOND_DAY = [
    jte("AttendeeCheckedIn", "a-4", "in-4b", "2026-11-30T09:00:00Z"),
    jte("AttendeeCheckedIn", "a-5", "in-5b", "2026-11-30T09:30:00Z"),
    jte("AttendeeCheckedOut", "a-5", "out-5b", "2026-11-30T10:00:00Z"),
]


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
async def test_two_event_days_at_desktop_and_phone_width(
    browser: Browser,
    start_service: Callable[..., RunningService],
    database_url: str,
    width: int,
) -> None:
    service = start_service(events={"spring-conf": EVENTS["spring-conf"]})
    await seed(service, SEED + SECOND_DAY)
    wait_until_caught_up(database_url)
    # An admin's token: the page then also shows the doctor's advice on refusals.
    token = api_token(database_url, "admin")
    context = await browser.new_context(
        timezone_id=TIME_ZONE, locale="en-GB", viewport={"width": width, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    refused: list[str] = []
    page.on(
        "response",
        lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    errors: list[Error] = []
    page.on("pageerror", lambda error: errors.append(error))
    shot = ARTIFACTS / f"dashboard-two-days-{width}.png"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        await sign_in(page, service.url, token)
        # The latest day with activity by default; only its own stays count as inside.
        await expect(page.locator("#day")).to_have_value("2026-11-30")
        await expect(page.locator("#inside")).to_have_text("1")
        await expect(page.locator("#inside-title")).to_have_text("Inside now")
        earlier = page.locator("#inside-earlier")
        await expect(earlier).to_be_visible()
        await expect(earlier).to_contain_text("2 people still marked inside from an earlier day")
        await expect(page.locator("#peak")).to_have_text("2")  # not May's 3
        await expect(page.locator("#peak-at time")).to_have_text("2026-11-30 10:35")
        point = page.locator('#chart svg circle.point[data-end="2026-11-30T09:35:00Z"]')
        await expect(point).to_have_attribute("data-inside", "2")

        # The pipeline's health: the last delivery, and a refusal counted within a refresh.
        await expect(page.locator("#health-last time")).to_have_count(1)
        await expect(page.locator("#health-refused")).to_have_text("0")
        await expect(page.locator("#stale-banner")).to_be_hidden()
        async with httpx.AsyncClient(base_url=service.url) as client:
            forged = await client.post(
                "/webhooks/jte/spring-conf", content=SECOND_DAY[0], headers=token_headers("no")
            )
            assert forged.status_code == 401
        await expect(page.locator("#health-refused")).to_have_text("1", timeout=WAIT_MS)
        doctor = page.locator("#doctor")
        await expect(doctor).to_be_visible(timeout=WAIT_MS)
        await expect(doctor).to_contain_text("secret_mismatch 1")
        await expect(doctor).to_contain_text("a secret rollcall does not have")

        # Nothing overflows sideways, and the chart's labels keep a readable size.
        scroll = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, scroll
        label = page.locator("#chart svg text.axis-label").first
        box = await label.bounding_box()
        assert box is not None and box["height"] >= 10, box
        await page.screenshot(path=shot, full_page=True)

        # Attendee search, and a CSV download.
        await page.locator("#search").fill("Wiśniewska")
        await page.locator("#search-form button").click()
        await expect(page.locator("#search-results tbody tr td.name")).to_have_text(
            ["Anna Wiśniewska"]
        )
        async with page.expect_download() as download_info:
            await page.locator('[data-csv="roster"]').click()
        download = await download_info.value
        saved = await download.path()
        csv_text = await asyncio.to_thread(Path(saved).read_text, encoding="utf-8")
        assert csv_text.splitlines()[0].startswith("attendee_id")
        assert len(csv_text.splitlines()) == 1 + len(PEOPLE)

        # The first day: its own peak, and who was inside at its end.
        await page.locator("#day").select_option("2026-05-14")
        await expect(page.locator("#inside-title")).to_have_text("Inside at the day's end")
        await expect(page.locator("#inside")).to_have_text("2")
        await expect(page.locator("#peak")).to_have_text("3")
        # The view's own peak (to the second) is the second day's: this one is the end of
        # the 5-minute bucket it was reached in (09:40:12Z -> 09:45Z, 11:45 in Warsaw).
        await expect(page.locator("#peak-at time")).to_have_text("2026-05-14 11:45")
        await expect(page.locator("#inside-earlier")).to_be_hidden()
        await page.screenshot(path=ARTIFACTS / f"dashboard-first-day-{width}.png", full_page=True)
    except Exception:
        await page.screenshot(path=ARTIFACTS / f"dashboard-two-days-{width}-failure.png")
        raise
    finally:
        await context.close()
    assert refused == [], "no request of the page was refused (no 400 for too many buckets)"
    assert [str(error) for error in errors] == []


async def test_health_says_stale_when_the_views_stop(
    start_service: Callable[..., RunningService],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = start_service(events={"spring-conf": EVENTS["spring-conf"]})
    await seed(running, SEED)
    wait_until_caught_up(database_url)
    running.stop()
    # The same database, now with no projection runner: deliveries wait, the views stop.
    stopped = start_service(events={"spring-conf": EVENTS["spring-conf"]}, projections=False)
    await seed(stopped, SECOND_DAY[:2])
    reader = bearer(api_token(database_url, "read"))
    async with httpx.AsyncClient(base_url=stopped.url, headers=reader) as client:
        health = (await client.get("/v1/health")).json()
        assert health["last_delivery_at"] is not None
        assert all(v["lag_events"] == 2 for v in health["views"])
        assert health["stale"] is False  # behind, but for less than STALE_SECONDS yet
        # Time passes (STALE_SECONDS is 60 s; here, none at all is allowed).
        monkeypatch.setattr(day, "STALE_SECONDS", 0.0)
        health = (await client.get("/v1/health")).json()
        assert health["stale"] is True
        # Days in a time zone (the second day's deliveries are not applied yet); a zone
        # neither Python nor PostgreSQL knows is a 400, not a 500.
        days = (await client.get("/v1/events/spring-conf/days?tz=Europe/Warsaw")).json()
        assert days["days"] == [{"day": "2026-05-14", "entered": 3, "exited": 1}]
        for zone in ("a" * 300, "../etc/passwd", "Mars/Olympus", "posixrules", ""):
            answer = await client.get("/v1/events/spring-conf/days", params={"tz": zone})
            assert answer.status_code in (200, 400), (zone, answer.status_code)
            assert answer.status_code == 400 or zone == "posixrules"
        missing = await client.get("/v1/events/spring-conf/inside")
        assert missing.status_code == 400


HOSTILE = "<img src=x onerror=alert(1)>"


def registration(attendee_id: str, delivery_id: str, first: str, last: str) -> bytes:
    body = {
        "event": "AttendeeRegistered",
        "id": delivery_id,
        "occurredAt": "2026-05-01T08:00:00Z",
        "attendee": {"id": attendee_id, "email": "x@example.com", "firstName": first,
                     "lastName": last},
    }  # fmt: skip
    return json.dumps(body).encode()


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
async def test_delivery_log_page_at_desktop_and_phone_width(
    browser: Browser,
    start_service: Callable[..., RunningService],
    database_url: str,
    width: int,
) -> None:
    service = start_service(events={"spring-conf": EVENTS["spring-conf"]})
    # 26 stored deliveries (one page of 25 and one more), then a hostile name, a duplicate of
    # it, a quarantined delivery and a 401 carrying a signature header rollcall does not know.
    extra = [registration(f"x-{n}", f"reg-x-{n}", "Extra", str(n)) for n in range(15)]
    await seed(service, SEED + extra)
    evil = registration("a-evil", "reg-evil", HOSTILE, HOSTILE)
    await seed(service, [evil])
    async with httpx.AsyncClient(base_url=service.url) as client:
        again = await client.post(
            "/webhooks/jte/spring-conf", content=evil, headers=token_headers()
        )
        assert again.json()["status"] == "duplicate", again.text
        odd = b'{"event": "SomethingNew", "id": "odd-1", "attendee": {"id": "a-9"}}'
        held = await client.post("/webhooks/jte/spring-conf", content=odd, headers=token_headers())
        assert held.status_code == 202, held.text
        unknown = jte_headers({"x-jte-signature": "ab" * 32})
        refused = await client.post("/webhooks/jte/spring-conf", content=evil, headers=unknown)
        assert refused.status_code == 401
    wait_until_caught_up(database_url)
    admin = api_token(database_url, "admin")
    # The intake log is written once a second: wait until the API lists the 401 and the repeat.
    async with httpx.AsyncClient(base_url=service.url, headers=bearer(admin)) as client:
        for _ in range(100):
            log = (await client.get("/v1/deliveries", params={"limit": 5})).json()["items"]
            if {"rejected", "duplicate"} <= {i["outcome"] for i in log}:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the 401 and the duplicate never reached the log: {log}")

    context = await browser.new_context(
        timezone_id=TIME_ZONE, locale="en-GB", viewport={"width": width, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[Error] = []
    page.on("pageerror", lambda error: errors.append(error))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        await sign_in(page, service.url, admin)
        await expect(page.locator("#board")).to_be_visible()
        await page.locator("#show-log").click()
        await expect(page.locator("#board")).to_be_hidden()
        rows = page.locator("#log-table tbody tr")
        await expect(rows).to_have_count(25)
        outcomes = rows.locator("td:nth-child(2) .badge")
        await expect(outcomes.first).to_have_text("401 rejected")
        first_four = [await outcomes.nth(i).inner_text() for i in range(4)]
        assert first_four == ["401 rejected", "202 quarantined", "200 duplicate", "200 accepted"]
        rejected = rows.nth(0)
        await expect(rejected.locator("td.reason")).to_have_text("no_credentials")
        await expect(rejected.locator("td.headers")).to_contain_text("x-jte-signature")
        await expect(rows.nth(1).locator("td.reason")).to_contain_text("SomethingNew")
        await expect(rows.nth(3).locator("td.attendee")).to_have_text("a-evil")
        await expect(rows.nth(3).locator("td.type")).to_have_text("AttendeeRegistered")
        # Nothing overflows sideways, and at phone width too a refusal's header names are on
        # screen without scrolling the table (rows stack as blocks there).
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        box = await rejected.locator("td.headers").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
        await page.screenshot(path=ARTIFACTS / f"dashboard-log-{width}.png", full_page=True)

        # "More" follows the keyset cursor to the oldest delivery, then there is no more.
        await page.locator("#log-more").click()
        await expect(rows).to_have_count(len(SEED) + len(extra) + 4)
        await expect(rows.last.locator("td.type")).to_have_text("AttendeeRegistered")
        await expect(rows.last.locator("td.attendee")).to_have_text("a-1")
        await expect(page.locator("#log-more")).to_be_hidden()

        # A refusal's detail: header names and the shape of their values, never a value.
        await rejected.click()
        detail = page.locator("#log-detail")
        await expect(detail).to_be_visible()
        await expect(detail.locator(".header-names")).to_contain_text("x-jte-signature")
        await expect(detail.locator(".header-names")).to_contain_text("hex:64")
        await expect(detail).not_to_contain_text("ab" * 32)

        # The hostile name's delivery: its body is text, its views applied it.
        await rows.nth(3).click()
        body = detail.locator("pre.body-text")
        await expect(body).to_contain_text(HOSTILE)
        assert await body.evaluate("node => node.children.length") == 0
        assert await page.locator("img").count() == 0
        for view in ("roster", "occupancy", "payments"):
            await expect(detail.locator(f'.views-applied li[data-view="{view}"]')).to_contain_text(
                "applied"
            )
        await expect(detail.locator(".headers-kept")).to_contain_text("content-type")
        await expect(detail.locator(".facts").first).to_contain_text("a-evil")
        await page.screenshot(path=ARTIFACTS / f"dashboard-log-detail-{width}.png", full_page=True)
        await detail.screenshot(path=ARTIFACTS / f"dashboard-log-detail-panel-{width}.png")
        assert await page.evaluate("document.documentElement.scrollWidth") <= width

        # The duplicate opens the stored delivery it repeats; quarantined shows its reason.
        await rows.nth(2).click()
        await expect(detail).to_contain_text("A repeat of a delivery already stored")
        await expect(detail.locator("pre.body-text")).to_contain_text(HOSTILE)
        await rows.nth(1).click()
        await expect(detail.locator(".views-applied")).to_contain_text("skipped")
        await expect(detail.locator("pre.body-text")).to_contain_text("SomethingNew")

        # Filters: outcome, attendee, event.
        await page.locator("#log-outcome").select_option("rejected")
        await page.locator("#log-apply").click()
        await expect(rows).to_have_count(1)
        await expect(rows.locator(".badge")).to_have_text("401 rejected")
        await page.locator("#log-outcome").select_option("")
        await page.locator("#log-attendee").fill("a-evil")
        await page.locator("#log-apply").click()
        await expect(rows).to_have_count(1)
        await expect(rows.locator(".badge")).to_have_text("200 accepted")
        await page.locator("#log-attendee").fill("")
        await page.locator("#log-event").select_option("other")
        await page.locator("#log-apply").click()
        await expect(page.locator("#log-empty")).to_be_visible()
        await expect(rows).to_have_count(0)

        # Back to the event: the board is as it was.
        await page.locator("#show-board").click()
        await expect(page.locator("#board")).to_be_visible()
        await expect(page.locator("#registered")).to_have_text(str(len(PEOPLE) + 16))
    except Exception:
        await page.screenshot(path=ARTIFACTS / f"dashboard-log-{width}-failure.png", full_page=True)
        raise
    finally:
        await context.close()
    assert dialogs == [], "a hostile name never runs as script"
    assert [str(error) for error in errors] == []


async def test_delivery_log_page_tells_a_read_token_it_needs_an_admin(
    browser: Browser,
    start_service: Callable[..., RunningService],
    database_url: str,
) -> None:
    service = start_service(events={"spring-conf": EVENTS["spring-conf"]})
    await seed(service, SEED[:2])
    wait_until_caught_up(database_url)
    context = await browser.new_context(
        timezone_id=TIME_ZONE, locale="en-GB", viewport={"width": 390, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[Error] = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        await sign_in(page, service.url, api_token(database_url, "read"))
        await expect(page.locator("#registered")).to_have_text("2")
        await page.locator("#show-log").click()
        notice = page.locator("#log-admin")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("needs an admin token")
        await expect(page.locator("#log-filters")).to_be_hidden()
        await expect(page.locator("#log-list")).to_be_hidden()
        await page.screenshot(path=ARTIFACTS / "dashboard-log-read-token.png", full_page=True)
        # Still signed in; the rest of the dashboard works with the read token.
        await page.locator("#show-board").click()
        await expect(page.locator("#board")).to_be_visible()
        await expect(page.locator("#login")).to_be_hidden()
        await expect(page.locator("#registered")).to_have_text("2")
        await expect(page.locator("#status")).to_contain_text("Live")
    finally:
        await context.close()
    assert [str(error) for error in errors] == []
