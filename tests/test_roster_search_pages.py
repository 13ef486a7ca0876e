"""A search's pages (projections/roster.py): the walk of the name order answers exactly what the
trigram query alone answers, for every roster, term, filter and cursor, on a real PostgreSQL.

The walk is made a few rows long here (SEARCH_WALK), so pages filled by the walk, walks that
reach the event's last row, and walks cut short (then the trigram query) all happen."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import roster
from projections.runner import ensure_views
from projections.schema import live_version

# Ties in the name order, case to fold, non-ASCII letters, and LIKE's own characters.
LAST_NAMES: tuple[str | None, ...] = (
    "Nowak", "nowak", "Nowakowska", "Żak", "ŻAKOWSKI", "Ślęzak", "Kowal_ska", "Pro%cent",
    "Back\\slash", "Åström", "", None,
)  # fmt: skip
FIRST_NAMES: tuple[str | None, ...] = (
    "Anna", "ANNA", "Jan", "Łucja", "An_na", "50%", "a\\b", "Ölmez", None,
)  # fmt: skip
DOMAINS = ("gmail.com", "nowak.pl", None)  # None: no email
TERMS: tuple[str, ...] = (
    "nowak", "NOWAK", "owa", "żak", "ŻAK", "ślę", "ÅST", "l_s", "o%c", "\\sl", "a\\b", "50%",
    "an_", "gmail", "a nowak", "zzz", "n@n",
)  # fmt: skip

Person = tuple[str | None, str | None, str | None, str, str | None, bool, bool]
person = st.tuples(
    st.sampled_from(FIRST_NAMES),
    st.sampled_from(LAST_NAMES),
    st.sampled_from(DOMAINS),
    st.sampled_from(("registered", "registered", "deleted", "unregistered")),
    st.sampled_from((None, "speaker")),
    st.booleans(),
    st.booleans(),
)
# Of any size up to three dozen walks' worth (hypothesis's own lists stay short).
people = st.integers(0, 60).flatmap(lambda n: st.lists(person, min_size=n, max_size=n))
# Mostly none, so that terms have many matches and pages follow one another.
filters = st.fixed_dictionaries(
    {
        "status": st.sampled_from((None, None, None, "registered", "all")),
        "role": st.sampled_from((None, None, None, "speaker")),
        "checked_in": st.sampled_from((None, None, None, True)),
        "paid": st.sampled_from((None, None, None, False)),
    }
)
Page = tuple[list[str], list[str] | None]


@pytest.fixture
def roster_table(database_url: str) -> str:
    """The live roster table, whose statement triggers fill the search table."""
    ensure_views(database_url)
    with psycopg.connect(database_url) as conn:
        version = live_version(conn, "roster")
        assert version is not None
        return version.table("roster").as_string(conn)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    connections = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        yield connections
    finally:
        await connections.close()


async def store(pool: asyncpg.Pool, table: str, slug: str, persons: list[Person]) -> None:
    """The persons as roster rows of `slug` (ids in another order than their names)."""
    ids = [f"a-{n}" for n in range(len(persons))]
    emails = [
        None if domain is None else f"{first or 'x'}.{last or 'y'}@{domain}"
        for first, last, domain, *_ in persons
    ]
    columns = [[person[n] for person in persons] for n in range(7)]
    await pool.execute(
        f"INSERT INTO {table} (slug, attendee_id, first_name, last_name, email, status, role, "
        "checked_in, paid, first_seen_at, fields, last_position, state) "
        "SELECT $1, i, f, l, e, s, r, c, p, now(), '{}', 0, '' FROM unnest($2::text[], "
        "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[], $9::bool[]) "
        "AS t(i, f, l, e, s, r, c, p)",
        slug,
        ids,
        columns[0],
        columns[1],
        emails,
        *columns[3:],
    )


async def walk_pages(
    pool: asyncpg.Pool, slug: str, only: roster.Filter, limit: int, after: list[str] | None = None
) -> list[Page]:
    """Every page from `after` on, each page's ids and the cursor it gave."""
    pages: list[Page] = []
    while True:
        items, after = await roster.page(pool, slug, only, limit, after)
        pages.append(([a.attendee_id for a in items], after))
        if after is None:
            return pages
        assert len(pages) <= 100, "the cursor goes round in circles"


async def exported(pool: asyncpg.Pool, slug: str, only: roster.Filter) -> list[str]:
    """What the filter's CSV export holds: ILIKE on the roster itself, no search table."""
    query, args, _ = roster.export(slug, only)
    return [row["attendee_id"] for row in await pool.fetch(query, *args)]


def term(data: st.DataObject, names: list[str]) -> str:
    """A term from the list, or a piece of someone's name (maybe across the space), in any
    case."""
    named = [name for name in names if len(name) >= 3]
    if not named or data.draw(st.booleans()):
        return data.draw(st.sampled_from(TERMS))
    name = data.draw(st.sampled_from(named))
    start = data.draw(st.integers(0, len(name) - 3))
    piece = name[start : data.draw(st.integers(start + 3, min(len(name), start + 8)))]
    return data.draw(st.sampled_from((piece, piece.upper(), piece.lower())))


_slugs = itertools.count()


@settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    persons=people,
    only=filters,
    walk=st.integers(1, 3),
    limit=st.integers(1, 5),
    data=st.data(),
)
async def test_a_searchs_pages_are_the_trigram_querys_whatever_the_walk_finds(
    pool: asyncpg.Pool,
    roster_table: str,
    monkeypatch: pytest.MonkeyPatch,
    persons: list[Person],
    only: dict[str, Any],
    walk: int,
    limit: int,
    data: st.DataObject,
) -> None:
    slug = f"walk-{next(_slugs)}"
    await store(pool, roster_table, slug, persons)
    q = term(data, [f"{p[0] or ''} {p[1] or ''}" for p in persons])
    search = roster.Filter(q=q, **only)
    monkeypatch.setattr(roster, "SEARCH_WALK", 0)
    trigram = await walk_pages(pool, slug, search, limit)
    monkeypatch.setattr(roster, "SEARCH_WALK", walk)
    assert await walk_pages(pool, slug, search, limit) == trigram
    assert [i for ids, _ in trigram for i in ids] == await exported(pool, slug, search)


async def test_the_walk_tells_a_walk_that_ended_from_one_cut_short(
    pool: asyncpg.Pool, roster_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twenty people in name order L00..L19; pages of 2, walks of 6 rows (2 x 3 rows a page).
    firsts = {0: "hit", 1: "hit", 2: "hit", 15: "far", 16: "far", 17: "far", 19: "end"}
    persons: list[Person] = [
        (firsts.get(n, "x"), f"L{n:02d}", None, "registered", None, False, False) for n in range(20)
    ]
    await store(pool, roster_table, "table", persons)
    keys = {f"a-{n}": [f"l{n:02d}", firsts.get(n, "x"), f"a-{n}"] for n in range(20)}
    trigram_pages: list[int] = []
    trigram_page: Callable[[str, int], str] = roster._narrow_searched_page

    def counted(where: str, limit_arg: int) -> str:
        trigram_pages.append(1)
        return trigram_page(where, limit_arg)

    monkeypatch.setattr(roster, "_narrow_searched_page", counted)
    monkeypatch.setattr(roster, "SEARCH_WALK", 2)

    async def first_page(q: str, after: str | None) -> tuple[list[str], int]:
        trigram_pages.clear()
        cursor = keys[after] if after else None
        items, _ = await roster.page(pool, "table", roster.Filter(q=q), 2, cursor)
        return [a.attendee_id for a in items], len(trigram_pages)

    # The page is full within the walk: the trigram query is not asked.
    assert await first_page("hit", None) == (["a-0", "a-1"], 0)
    # Its matches lie beyond the walk: asked.
    assert await first_page("far", None) == (["a-15", "a-16"], 1)
    # Fewer than a page's rows are left after the cursor: the walk read them all.
    assert await first_page("far", "a-15") == (["a-16", "a-17"], 0)
    assert await first_page("end", "a-14") == (["a-19"], 0)  # 5 rows left
    # Exactly a walk's rows left, the last one matching: the walk cannot tell, so it asks.
    assert await first_page("end", "a-13") == (["a-19"], 1)
    # One more row than a walk: the match is the first row past it.
    assert await first_page("end", "a-12") == (["a-19"], 1)
    assert await first_page("zzz", "a-18") == ([], 0)
