"""The operator's pages (admins only): dashboard (with its chart of attempts, on SQLite and
PostgreSQL), ToolCalls, result fetches and their retry, clients and tools (docs/api.md §5-§8), and the
navigation (Flower). The ToolBus page against real workers: tests/test_ops_toolbus.py."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta

import pytest
from helpers import CALLBACKS_KEY
from portal_support import (
    add_client,
    add_tool,
    add_user,
    csrf,
    logged_in,
)
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import joinedload

from webapp import SECURITY_HEADERS, lifecycle
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, User, utcnow

OPERATOR = ("operator", "ops-password")  # an admin: may use the ops pages
SECRET = "very-secret-value-42"
HAPPY_PATH = [
    Status.START_TK_SENT,
    Status.START_DATA_SENT,
    Status.RESULT_TK_RECEIVED,
    Status.RESULT_RECEIVED_OK,
    Status.RESULT_SAVED,
    Status.FINISHED_OK,
]


def furnish(app):
    """Migrate and add a client, a tool, an operator (admin) and a candidate (not admin)."""
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        add_tool(session, client, "excel")
        add_user(session, OPERATOR[0], password=OPERATOR[1]).is_admin = True
        add_user(session, "candidate", password="secret")
    return app


@pytest.fixture(name="ops")
def ops_fixture(app, redis_db):
    """A portal on SQLite with a client, a tool, an operator (admin) and a candidate (not admin)."""
    return furnish(app)


@pytest.fixture(name="ops_on_each_database")
def ops_on_each_database_fixture(app_on_each_database, redis_db):
    """The same portal, once on SQLite and once on PostgreSQL (the chart's SQL must suit both)."""
    return furnish(app_on_each_database)


# ---- helpers ----------------------------------------------------------------------------------------


def new_toolcall(app, statuses=(), slug="excel", username="candidate", started=None) -> int:
    """A ToolCall of ``username`` at ``slug`` moved through ``statuses``; returns its id."""
    with app.extensions["db"].session() as session:
        tool = session.scalar(select(Exam).where(Exam.slug == slug))
        user = session.scalar(select(User).where(User.username == username))
        toolcall = lifecycle.create(session, tool, user, "attempt started")
        if started is not None:
            toolcall.started = started
        for status in statuses:
            lifecycle.advance(session, toolcall, (status, f"moved to {status}"))
        return toolcall.id


def new_fetch(app, token="R1", state="failed", toolcall_id=None, **fields) -> int:
    with app.extensions["db"].session() as session:
        client = session.scalar(select(Client).where(Client.name == "vendor"))
        fetch = ResultFetch(client_id=client.id, token=token, state=state, toolcall_id=toolcall_id, **fields)
        session.add(fetch)
        session.flush()
        return fetch.id


def get_fetch(app, fetch_id: int) -> ResultFetch:
    with app.extensions["db"].session() as session:
        return session.get(ResultFetch, fetch_id)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def chart_bars(html: str) -> dict[tuple[str, str], int]:
    """{(bucket, status): attempts} of the chart's bars."""
    bars = re.findall(
        r'<rect class="bar" data-bucket="([^"]+)" data-status="([^"]+)" data-count="(\d+)"', html
    )
    return {(bucket, status): int(n) for bucket, status, n in bars}


def count_cell(html: str, row_id: str) -> int:
    return int(re.search(rf'id="{row_id}">.*?<td class="count[^"]*">(\d+)</td>', html, re.S).group(1))


def listed_toolcalls(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="toolcall"><td><a href="/ops/toolcalls/(\d+)/">', html)]


def retry(client, fetch_id: int, page: str = "/ops/fetches/", **data):
    token = csrf(client.get(page).data)
    return client.post(f"/ops/fetches/{fetch_id}/retry", data={"csrf_token": token, **data})


def clients(app) -> dict[str, Client]:
    with app.extensions["db"].session() as session:
        return {c.name: c for c in session.scalars(select(Client))}


def tools(app) -> dict[str, Exam]:
    with app.extensions["db"].session() as session:
        return {t.slug: t for t in session.scalars(select(Exam).options(joinedload(Exam.client)))}


def client_form(
    name="acme", start="https://acme.example/start/", result="https://acme.example/result/", **more
):
    return {"name": name, "start_url": start, "result_url": result, **more}


def tool_form(app, slug="word", client="vendor", **more):
    fields = {
        "slug": slug,
        "client": str(clients(app)[client].id),
        "name": "Word",
        "description": "Letters and such.",
        "restartable": "y",
        "deadline_minutes": "90",
    }
    fields.update(more)
    return {k: v for k, v in fields.items() if v is not None}


def post_form(client, url: str, data: dict):
    return client.post(url, data={"csrf_token": csrf(client.get(url).data), **data})


PAGES = [
    "/ops/",
    "/ops/?chart=14d",
    "/ops/toolbus/",
    "/ops/toolcalls/",
    "/ops/toolcalls/{toolcall}/",
    "/ops/fetches/",
    "/ops/clients/",
    "/ops/clients/new/",
    "/ops/clients/{client}/",
    "/ops/tools/",
    "/ops/tools/new/",
    "/ops/tools/{tool}/",
]


def page_url(app, template: str) -> str:
    return template.format(
        toolcall=new_toolcall(app), client=clients(app)["vendor"].id, tool=tools(app)["excel"].id
    )


# ---- access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_an_anonymous_visitor_is_sent_to_the_login_page(ops, page):
    response = ops.test_client().get(page_url(ops, page))
    assert response.status_code == 302 and "/accounts/login/" in response.headers["Location"]


@pytest.mark.parametrize("page", PAGES)
def test_a_user_who_is_not_an_admin_gets_403(ops, page):
    response = logged_in(ops, "candidate", "secret").get(page_url(ops, page))
    assert response.status_code == 403 and b"operators only" in response.data


@pytest.mark.parametrize("page", PAGES)
def test_an_admin_sees_every_page(ops, page):
    assert logged_in(ops, *OPERATOR).get(page_url(ops, page)).status_code == 200


def test_the_portal_nav_links_to_ops_for_admins_only(ops):
    assert b'href="/ops/"' in logged_in(ops, *OPERATOR).get("/").data
    assert b'href="/ops/"' not in logged_in(ops, "candidate", "secret").get("/").data


def test_an_unknown_toolcall_is_404(ops):
    assert logged_in(ops, *OPERATOR).get("/ops/toolcalls/999/").status_code == 404


# ---- dashboard --------------------------------------------------------------------------------------


def test_the_dashboard_counts_toolcalls_by_every_status_zeros_included(ops):
    new_toolcall(ops, HAPPY_PATH)
    new_toolcall(ops, HAPPY_PATH)
    new_toolcall(ops, [Status.START_TK_SENT, Status.START_TK_ERR])  # ends in finished-err
    new_toolcall(ops, [Status.START_TK_SENT])
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    counts = {status.value: count_cell(html, f"status-{status.value}") for status in Status}
    expected = dict.fromkeys((s.value for s in Status), 0)
    expected.update({"finished-ok": 2, "finished-err": 1, "start-tk-sent": 1})
    assert counts == expected and count_cell(html, "status-all") == 4


def test_the_dashboard_counts_owed_and_failed_fetches(ops):
    new_fetch(ops, "R1", "owed")
    new_fetch(ops, "R2", "failed")
    new_fetch(ops, "R3", "failed")
    new_fetch(ops, "R4", "done")
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert (count_cell(html, "fetches-owed"), count_cell(html, "fetches-failed")) == (1, 2)


def test_the_dashboard_charts_the_attempts_of_the_last_24_hours_per_hour_stacked_by_status(
    ops_on_each_database,
):
    ops = ops_on_each_database
    two_hours_ago = hour_of(utcnow()) - timedelta(hours=2)
    five_hours_ago = hour_of(utcnow()) - timedelta(hours=5)
    new_toolcall(ops, HAPPY_PATH, started=two_hours_ago + timedelta(minutes=10))
    new_toolcall(ops, HAPPY_PATH, started=two_hours_ago + timedelta(minutes=59, seconds=59))
    new_toolcall(ops, [Status.START_TK_SENT], started=two_hours_ago)  # a bucket includes its start
    new_toolcall(ops, [Status.START_TK_SENT, Status.START_TK_ERR], started=five_hours_ago)
    new_toolcall(ops, started=utcnow() - timedelta(days=3))  # before the chart's window
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert chart_bars(html) == {
        (f"{two_hours_ago:%Y-%m-%dT%H:%M}", "finished-ok"): 2,
        (f"{two_hours_ago:%Y-%m-%dT%H:%M}", "start-tk-sent"): 1,
        (f"{five_hours_ago:%Y-%m-%dT%H:%M}", "finished-err"): 1,
    }
    assert re.findall(r'<li data-status="([^"]+)">', html) == ["start-tk-sent", "finished-ok", "finished-err"]
    assert "Attempts started, last 24 hours" in html


def test_the_dashboard_charts_the_attempts_of_the_last_14_days_per_day(ops_on_each_database):
    ops = ops_on_each_database
    today = hour_of(utcnow()).replace(hour=0)
    new_toolcall(ops, HAPPY_PATH, started=today - timedelta(days=3) + timedelta(hours=1))
    new_toolcall(ops, [Status.START_TK_SENT], started=today - timedelta(days=3) + timedelta(hours=23))
    new_toolcall(ops, HAPPY_PATH, started=today - timedelta(days=10))
    new_toolcall(ops, started=today - timedelta(days=20))  # before the chart's window
    html = logged_in(ops, *OPERATOR).get("/ops/?chart=14d").data.decode()
    three_days_ago, ten_days_ago = today - timedelta(days=3), today - timedelta(days=10)
    assert chart_bars(html) == {
        (f"{three_days_ago:%Y-%m-%dT%H:%M}", "finished-ok"): 1,
        (f"{three_days_ago:%Y-%m-%dT%H:%M}", "start-tk-sent"): 1,
        (f"{ten_days_ago:%Y-%m-%dT%H:%M}", "finished-ok"): 1,
    }
    assert 'data-span="14d"' in html and "day started (UTC)" in html


def test_the_chart_has_axis_labels_scaled_to_the_busiest_bucket(ops):
    now = utcnow()
    for _ in range(7):
        new_toolcall(ops, started=now)
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    chart = re.search(r'<svg class="chart".*?</svg>', html, re.S).group(0)
    y_labels = [int(v) for v in re.findall(r'text-anchor="end">(\d+)</text>', chart)]
    x_labels = re.findall(r'<text class="x-label"[^>]*>([^<]+)</text>', chart)
    assert y_labels == [0, 2, 4, 6, 8]  # round steps, the top above the busiest hour's 7
    assert len(x_labels) == 8 and x_labels[-1] == f"{hour_of(now):%H:%M}"  # every third hour, up to now
    assert "hour started (UTC)" in chart and ">attempts</text>" in chart


def test_the_chart_is_inline_svg_that_the_content_security_policy_allows(ops):
    new_toolcall(ops)
    response = logged_in(ops, *OPERATOR).get("/ops/")
    html = response.data.decode()
    assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert '<svg class="chart"' in html and "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html.replace('href="http://127.0.0.1:5555/"', ""))


def test_without_attempts_in_the_window_the_chart_says_so(ops):
    new_toolcall(ops, HAPPY_PATH, started=utcnow() - timedelta(days=2))
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert '<svg class="chart"' not in html and chart_bars(html) == {}
    assert 'id="attempts-chart-empty">No attempts started in the last 24 hours.' in html


def test_times_are_called_utc_only_on_ops_pages_that_show_times(ops):
    client = logged_in(ops, *OPERATOR)
    pages = ("/ops/", "/ops/toolcalls/", "/ops/fetches/", "/ops/toolbus/")
    for path in pages:  # nothing yet: no chart, no rows, no failed calls
        html = client.get(path).data.decode()
        assert "Times are UTC." not in html, f"{path} says times are UTC but shows none"
    new_fetch(ops, "R1", "failed", toolcall_id=new_toolcall(ops, HAPPY_PATH))
    for path in pages[:3]:  # the chart and the failed fetch; the ToolCall; the failed fetch
        assert "Times are UTC." in client.get(path).data.decode(), f"{path} shows times unexplained"


def test_an_unknown_chart_span_shows_the_last_24_hours(ops):
    html = logged_in(ops, *OPERATOR).get("/ops/?chart=forever").data.decode()
    assert "Attempts started, last 24 hours" in html


def test_the_dashboard_lists_the_failed_fetches_with_a_retry_button(ops):
    failed = new_fetch(ops, "R1", "failed", last_error="HTTP 503 from the vendor")
    new_fetch(ops, "R2", "owed")
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert re.findall(r'<tr class="fetch" id="fetch-(\d+)">', html) == [str(failed)]
    assert f'action="/ops/fetches/{failed}/retry"' in html and "HTTP 503 from the vendor" in html


def test_the_dashboard_lists_the_latest_ten_failed_fetches_and_links_to_all(ops):
    start = utcnow() - timedelta(hours=1)
    ids = [new_fetch(ops, f"R{i}", "failed", reported_at=start + timedelta(minutes=i)) for i in range(12)]
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert re.findall(r'<tr class="fetch" id="fetch-(\d+)">', html) == [str(i) for i in ids[::-1][:10]]
    assert "the latest 10 of 12" in html and 'href="/ops/fetches/?state=failed">all</a>' in html


def test_retry_from_the_dashboard_reopens_the_fetch_and_returns_to_the_dashboard(ops, redis_db):
    fetch_id = new_fetch(ops, state="failed", last_error="HTTP 500")
    client = logged_in(ops, *OPERATOR)
    back = re.search(r'name="next" value="([^"]+)"', client.get("/ops/").data.decode()).group(1)
    response = retry(client, fetch_id, "/ops/", next=back)
    assert (response.status_code, response.headers["Location"]) == (303, "/ops/")
    assert get_fetch(ops, fetch_id).state == "owed" and redis_db.llen(CALLBACKS_KEY) == 1
    html = client.get("/ops/").data.decode()
    assert f"Result fetch {fetch_id} is owed again and queued." in html
    assert count_cell(html, "fetches-owed") == 1 and count_cell(html, "fetches-failed") == 0


# ---- navigation -------------------------------------------------------------------------------------


def test_the_ops_navigation_links_to_the_toolbus_page_and_to_flower(ops):
    html = logged_in(ops, *OPERATOR).get("/ops/clients/").data.decode()
    nav = re.search(r'<nav class="ops">(.*?)</nav>', html, re.S).group(1)
    assert 'href="/ops/toolbus/"' in nav
    assert 'href="http://127.0.0.1:5555/"' in nav and "its own login" in nav


def test_the_flower_link_follows_the_flower_url_setting(ops):
    ops.config["FLOWER_URL"] = "https://flower.example.org/"
    html = logged_in(ops, *OPERATOR).get("/ops/").data.decode()
    assert 'id="flower-link">Flower</a>' in html and 'href="https://flower.example.org/"' in html


# ---- ToolCalls --------------------------------------------------------------------------------------


def test_the_toolcall_list_filters_by_status(ops):
    finished = new_toolcall(ops, HAPPY_PATH)
    new_toolcall(ops, [Status.START_TK_SENT])
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?status=finished-ok").data.decode()
    assert listed_toolcalls(html) == [finished]


def test_the_toolcall_list_filters_by_tool(ops):
    with ops.extensions["db"].session() as session:
        add_tool(session, session.scalar(select(Client)), "word")
    new_toolcall(ops, slug="excel")
    word = new_toolcall(ops, slug="word")
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?tool=word").data.decode()
    assert listed_toolcalls(html) == [word]


def test_the_toolcall_list_filters_by_status_and_tool_together(ops):
    with ops.extensions["db"].session() as session:
        add_tool(session, session.scalar(select(Client)), "word")
    new_toolcall(ops, HAPPY_PATH, slug="excel")
    new_toolcall(ops, [Status.START_TK_SENT], slug="word")
    wanted = new_toolcall(ops, HAPPY_PATH, slug="word")
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?status=finished-ok&tool=word").data.decode()
    assert listed_toolcalls(html) == [wanted]


def test_the_toolcall_list_offers_every_status_and_tool_in_its_selects(ops):
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/").data.decode()
    options = set(re.findall(r'<option[^>]*value="([^"]*)"', html))
    assert options == {"", "excel"} | {s.value for s in Status}


def test_an_unknown_status_filter_is_a_form_error(ops):
    response = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?status=lost")
    assert response.status_code == 400 and b'class="error"' in response.data


def many_toolcalls(app, n: int, started: datetime, step=timedelta(minutes=1), status="initial") -> list[int]:
    """``n`` ToolCalls of the candidate at excel started ``step`` apart from ``started`` on, written
    in one statement (a list's paging needs rows, not their lives); their ids, oldest first."""
    with app.extensions["db"].session() as session:
        tool_id = session.scalar(select(Exam.id).where(Exam.slug == "excel"))
        user_id = session.scalar(select(User.id).where(User.username == "candidate"))
        first = (session.scalar(select(func.max(ToolCall.id))) or 0) + 1
        session.execute(
            insert(ToolCall),
            [
                {"id": first + i, "tool_id": tool_id, "user_id": user_id, "started": started + step * i,
                 "status": status, "attempt": first + i}
                for i in range(n)
            ],
        )  # fmt: skip
    return list(range(first, first + n))


def next_link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def walk(client, url: str, rel: str = "next") -> list[list[int]]:
    """The ToolCalls of each page from ``url`` on, following the ``rel`` links to the end."""
    pages = []
    while url:
        html = client.get(url).data.decode()
        pages.append(listed_toolcalls(html))
        url = next_link(html, rel)
    return pages


def test_the_toolcall_list_shows_the_newest_first_fifty_a_page(ops):
    ids = many_toolcalls(ops, 51, utcnow() - timedelta(days=1))
    client = logged_in(ops, *OPERATOR)
    first = client.get("/ops/toolcalls/").data.decode()
    second = client.get(next_link(first, "next")).data.decode()
    assert listed_toolcalls(first) == ids[::-1][:50] and listed_toolcalls(second) == [ids[0]]
    assert next_link(first, "prev") is None and next_link(second, "next") is None
    assert "51 in all" in first and "51 in all" in second


def test_exactly_a_page_of_toolcalls_has_no_link_to_older_ones(ops):
    many_toolcalls(ops, 50, utcnow() - timedelta(days=1))
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/").data.decode()
    assert len(listed_toolcalls(html)) == 50 and next_link(html, "next") is None


def test_an_empty_list_says_so_and_links_nowhere(ops):
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/").data.decode()
    assert "No ToolCalls." in html and "0 in all" in html
    assert next_link(html, "next") is None and next_link(html, "prev") is None


def test_paging_to_the_end_and_back_shows_every_toolcall_once_in_order(ops):
    ids = many_toolcalls(ops, 137, utcnow() - timedelta(days=3))
    client = logged_in(ops, *OPERATOR)
    down = walk(client, "/ops/toolcalls/", "next")
    assert [len(p) for p in down] == [50, 50, 37]
    assert [i for p in down for i in p] == ids[::-1]
    last_url = "/ops/toolcalls/"
    for _ in range(2):
        last_url = next_link(client.get(last_url).data.decode(), "next")
    up = walk(client, last_url, "prev")
    assert up == down[::-1]


def test_toolcalls_started_at_the_same_moment_are_paged_by_id_without_loss_or_repeat(ops):
    moment = utcnow() - timedelta(hours=1)
    ids = many_toolcalls(ops, 120, moment, step=timedelta(0))
    pages = walk(logged_in(ops, *OPERATOR), "/ops/toolcalls/")
    assert [i for p in pages for i in p] == ids[::-1] and [len(p) for p in pages] == [50, 50, 20]


def test_a_toolcall_started_while_paging_shows_on_the_first_page_and_shifts_nothing(ops):
    ids = many_toolcalls(ops, 100, utcnow() - timedelta(days=1))
    client = logged_in(ops, *OPERATOR)
    first = client.get("/ops/toolcalls/").data.decode()
    newest = new_toolcall(ops)  # with OFFSET paging, this would push one row onto page 2 again
    second = listed_toolcalls(client.get(next_link(first, "next")).data.decode())
    assert second == ids[::-1][50:]
    assert listed_toolcalls(client.get("/ops/toolcalls/").data.decode())[0] == newest


def test_the_newer_link_of_a_short_second_page_leads_back_to_the_first(ops):
    ids = many_toolcalls(ops, 60, utcnow() - timedelta(days=1))
    client = logged_in(ops, *OPERATOR)
    second = client.get(next_link(client.get("/ops/toolcalls/").data.decode(), "next")).data.decode()
    back = client.get(next_link(second, "prev")).data.decode()
    assert listed_toolcalls(back) == ids[::-1][:50] and next_link(back, "prev") is None


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        "%%%",
        "bm90IGEgY3Vyc29y",
        "MjAyNS0wMS0wMVQwMDowMDowMHwx",
        "MjAyNS0wMS0wMVQwMDowMDowMCswMDowMHx4",
    ],
)
@pytest.mark.parametrize("direction", ["after", "before"])
def test_a_broken_page_link_is_a_400_page_not_a_500(ops, cursor, direction):
    many_toolcalls(ops, 3, utcnow() - timedelta(days=1))
    response = logged_in(ops, *OPERATOR).get(f"/ops/toolcalls/?{direction}={cursor}")
    if cursor == "":  # no cursor at all: the first page
        assert response.status_code == 200
        return
    assert response.status_code == 400 and b"link is broken" in response.data


def test_a_list_of_more_than_ten_thousand_says_so_without_counting_them_all(ops):
    many_toolcalls(ops, 10_001, utcnow() - timedelta(days=30), step=timedelta(seconds=10))
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/").data.decode()
    assert "10,000+ in all" in html and len(listed_toolcalls(html)) == 50


def test_the_pager_keeps_the_filter(ops):
    many_toolcalls(ops, 51, utcnow() - timedelta(days=1))
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?tool=excel").data.decode()
    assert re.search(r'rel="next" href="/ops/toolcalls/\?[^"]*tool=excel', html)


def test_a_filtered_list_pages_through_the_matching_toolcalls_only(ops):
    start = utcnow() - timedelta(days=1)
    finished = many_toolcalls(ops, 60, start, status="finished-ok")
    many_toolcalls(ops, 60, start + timedelta(seconds=30), status="finished-err")
    pages = walk(logged_in(ops, *OPERATOR), "/ops/toolcalls/?status=finished-ok")
    assert [i for p in pages for i in p] == finished[::-1]


def statements_of(app, client, url: str) -> int:
    """How many SQL statements one GET of ``url`` runs."""
    ran: list[str] = []

    def count(conn, cursor, statement, *_) -> None:
        ran.append(statement)

    engine = app.extensions["db"].engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert client.get(url).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(ran)


@pytest.mark.parametrize(
    "url",
    [
        "/ops/",
        "/ops/toolcalls/",
        "/ops/fetches/?state=all",
        "/ops/clients/",
        "/ops/tools/",
        "/tooluser/attempts/",
    ],
)
def test_a_list_runs_as_many_statements_for_fifty_rows_as_for_three(ops, url):
    """No row loads anything of its own (a client's tools, an attempt's tool...): no N+1."""
    client = logged_in(ops, *OPERATOR)
    if url.startswith("/tooluser/"):
        client = logged_in(ops, "candidate", "secret")

    def grow(n: int) -> None:
        with ops.extensions["db"].session() as session:
            for i in range(n):
                other = add_client(session, f"vendor-{n}-{i}")
                add_tool(session, other, f"tool-{n}-{i}")
        for i in range(n):
            new_fetch(ops, f"R-{n}-{i}", "done", new_toolcall(ops, slug=f"tool-{n}-{i}"))

    grow(3)
    few = statements_of(ops, client, url)
    grow(47)
    assert statements_of(ops, client, url) == few


def test_one_toolcalls_page_runs_as_many_statements_for_many_fetches_as_for_one(ops):
    toolcall_id = new_toolcall(ops)
    new_fetch(ops, "R-first", "failed", toolcall_id)
    client = logged_in(ops, *OPERATOR)
    one = statements_of(ops, client, f"/ops/toolcalls/{toolcall_id}/")
    with ops.extensions["db"].session() as session:
        for i in range(5):
            add_client(session, f"other-{i}")
    for i, client_row in enumerate(clients(ops).values()):
        with ops.extensions["db"].session() as session:
            session.add(
                ResultFetch(
                    client_id=client_row.id, token=f"R-many-{i}", state="failed", toolcall_id=toolcall_id
                )
            )
    assert statements_of(ops, client, f"/ops/toolcalls/{toolcall_id}/") == one


# ---- finding a ToolCall ------------------------------------------------------------------------------


def test_toolcalls_are_found_by_username(ops):
    with ops.extensions["db"].session() as session:
        add_user(session, "someone-else")
    mine = new_toolcall(ops)
    new_toolcall(ops, username="someone-else")
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?user=candidate").data.decode()
    assert listed_toolcalls(html) == [mine]


def test_toolcalls_are_found_by_persnr(ops):
    with ops.extensions["db"].session() as session:
        persnr = add_user(session, "someone-else").persnr
    new_toolcall(ops)
    theirs = new_toolcall(ops, username="someone-else")
    html = logged_in(ops, *OPERATOR).get(f"/ops/toolcalls/?user=+{persnr}+").data.decode()
    assert listed_toolcalls(html) == [theirs]


def test_an_unknown_user_finds_nothing_and_says_so(ops):
    new_toolcall(ops)
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?user=nobody").data.decode()
    assert listed_toolcalls(html) == [] and "No user has the username or persnr &#39;nobody&#39;" in html


def test_toolcalls_are_found_by_result_token_on_a_fetch_or_a_stored_result(ops):
    fetched, stored, other = new_toolcall(ops), new_toolcall(ops), new_toolcall(ops)
    new_fetch(ops, "R-shared", "done", fetched)
    new_fetch(ops, "R-other", "done", other)
    new_fetch(ops, "R-shared-but-unattributed", "failed")
    with ops.extensions["db"].session() as session:
        session.add(ToolCallResult(toolcall_id=stored, data="{}", token="R-shared", persnr="N1", exam="excel",
                                   passed=True))  # fmt: skip
    client = logged_in(ops, *OPERATOR)
    html = client.get("/ops/toolcalls/?token=R-shared").data.decode()
    assert sorted(listed_toolcalls(html)) == sorted([fetched, stored])
    assert 'href="/ops/fetches/?state=all&amp;token=R-shared"' in html
    assert listed_toolcalls(client.get("/ops/toolcalls/?token=R-none").data.decode()) == []


def test_a_toolcall_id_leads_to_its_page(ops):
    toolcall_id = new_toolcall(ops)
    client = logged_in(ops, *OPERATOR)
    response = client.get(f"/ops/toolcalls/?id={toolcall_id}")
    assert (response.status_code, response.headers["Location"]) == (303, f"/ops/toolcalls/{toolcall_id}/")
    missing = client.get("/ops/toolcalls/?id=99999")
    assert missing.status_code == 404 and b"there is no ToolCall 99999" in missing.data


def test_toolcalls_are_found_by_start_date_both_days_included(ops):
    day = hour_of(utcnow()).replace(hour=0) - timedelta(days=10)
    before = new_toolcall(ops, started=day - timedelta(seconds=1))
    first = new_toolcall(ops, started=day)
    last = new_toolcall(ops, started=day + timedelta(days=2, hours=23, minutes=59))
    new_toolcall(ops, started=day + timedelta(days=3))
    client = logged_in(ops, *OPERATOR)
    since, until = f"{day:%Y-%m-%d}", f"{day + timedelta(days=2):%Y-%m-%d}"
    assert listed_toolcalls(client.get(f"/ops/toolcalls/?since={since}&until={until}").data.decode()) == [
        last,
        first,
    ]
    assert before in listed_toolcalls(client.get(f"/ops/toolcalls/?until={since}").data.decode())


def test_a_date_range_that_ends_before_it_starts_is_a_form_error(ops):
    response = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?since=2025-03-02&until=2025-03-01")
    assert response.status_code == 400 and b"must not be before the start date" in response.data


def test_a_date_that_is_not_one_is_a_form_error(ops):
    response = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?since=yesterday")
    assert response.status_code == 400 and b'class="error"' in response.data


def test_search_and_filters_combine(ops):
    with ops.extensions["db"].session() as session:
        add_user(session, "someone-else")
    new_toolcall(ops, HAPPY_PATH)
    wanted = new_toolcall(ops, [Status.START_TK_SENT])
    new_toolcall(ops, [Status.START_TK_SENT], username="someone-else")
    html = logged_in(ops, *OPERATOR).get("/ops/toolcalls/?user=candidate&status=start-tk-sent").data.decode()
    assert listed_toolcalls(html) == [wanted]


def test_the_fetch_list_finds_a_result_token_in_any_state(ops):
    new_fetch(ops, "R1", "owed")
    wanted = new_fetch(ops, "R2", "done")
    html = logged_in(ops, *OPERATOR).get("/ops/fetches/?state=all&token=R2").data.decode()
    assert re.findall(r'<tr class="fetch" id="fetch-(\d+)">', html) == [str(wanted)]


def test_the_toolcall_page_shows_the_user_and_the_whole_log_in_order(ops):
    toolcall_id = new_toolcall(ops, HAPPY_PATH)
    html = logged_in(ops, *OPERATOR).get(f"/ops/toolcalls/{toolcall_id}/").data.decode()
    rows = re.findall(r'<tr class="log"><td>[^<]+</td><td>([^<]+)</td><td>([^<]*)</td></tr>', html)
    assert rows == [("initial", "attempt started")] + [(str(s), f"moved to {s}") for s in HAPPY_PATH]
    with ops.extensions["db"].session() as session:
        persnr = session.scalar(select(User.persnr).where(User.username == "candidate"))
    assert "candidate" in html and persnr in html


def test_the_toolcall_page_shows_a_stored_result_with_its_body_verbatim(ops):
    toolcall_id = new_toolcall(ops, HAPPY_PATH)
    body = '{"type": "result", "data": {"note": "<b>5 > 3</b>", "score": 17}}'
    with ops.extensions["db"].session() as session:
        session.add(
            ToolCallResult(
                toolcall_id=toolcall_id, data=body, token="R1", persnr="N1", exam="excel",
                passed=True, score=17, late=True,
            )
        )  # fmt: skip
    html = logged_in(ops, *OPERATOR).get(f"/ops/toolcalls/{toolcall_id}/").data.decode()
    shown = re.search(r'<pre class="data">(.*?)</pre>', html, re.S).group(1)
    assert shown == body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    assert re.search(r"<th>Late</th><td>yes</td>", html) and "<th>Score</th><td>17</td>" in html


def test_the_toolcall_page_shows_its_fetches_with_a_retry_button_for_a_failed_one(ops):
    toolcall_id = new_toolcall(ops, [Status.START_TK_SENT, Status.START_DATA_SENT])
    fetch_id = new_fetch(
        ops, "R9", "failed", toolcall_id, attempts=3, last_error="HTTP 500", body="oops from vendor"
    )
    html = logged_in(ops, *OPERATOR).get(f"/ops/toolcalls/{toolcall_id}/").data.decode()
    row = re.search(rf'<tr class="fetch" id="fetch-{fetch_id}">(.*?)</tr>', html, re.S).group(1)
    assert "R9" in row and "failed" in row and "HTTP 500" in row and "oops from vendor" in row
    assert f'action="/ops/fetches/{fetch_id}/retry"' in row


# ---- result fetches ---------------------------------------------------------------------------------


def test_the_fetch_list_shows_the_failed_fetches_by_default(ops):
    failed = new_fetch(ops, "R1", "failed")
    new_fetch(ops, "R2", "owed")
    html = logged_in(ops, *OPERATOR).get("/ops/fetches/").data.decode()
    assert re.findall(r'<tr class="fetch" id="fetch-(\d+)">', html) == [str(failed)]


def test_the_fetch_list_filters_by_state(ops):
    new_fetch(ops, "R1", "failed")
    owed = new_fetch(ops, "R2", "owed")
    html = logged_in(ops, *OPERATOR).get("/ops/fetches/?state=owed").data.decode()
    assert re.findall(r'<tr class="fetch" id="fetch-(\d+)">', html) == [str(owed)]


def test_only_a_failed_fetch_has_a_retry_button(ops):
    new_fetch(ops, "R1", "failed")
    new_fetch(ops, "R2", "owed")
    html = logged_in(ops, *OPERATOR).get("/ops/fetches/?state=all").data.decode()
    assert len(re.findall(r'action="/ops/fetches/\d+/retry"', html)) == 1


def test_retry_reopens_a_failed_fetch(ops):
    fetch_id = new_fetch(
        ops, state="failed", last_error="HTTP 403", claimed_until=utcnow() + timedelta(minutes=1),
        next_attempt_at=utcnow() - timedelta(days=2), reported_at=utcnow() - timedelta(days=2),
    )  # fmt: skip
    before = utcnow()
    assert retry(logged_in(ops, *OPERATOR), fetch_id).status_code == 303
    fetch = get_fetch(ops, fetch_id)
    assert (fetch.state, fetch.claimed_until) == ("owed", None)
    assert before <= fetch.next_attempt_at <= utcnow() and before <= fetch.reported_at
    assert "operator" in fetch.last_error and "HTTP 403" in fetch.last_error


def test_retry_puts_the_fetch_task_on_the_callbacks_queue(ops, redis_db):
    fetch_id = new_fetch(ops, state="failed")
    retry(logged_in(ops, *OPERATOR), fetch_id)
    [message] = [json.loads(raw) for raw in redis_db.lrange(CALLBACKS_KEY, 0, -1)]
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert (message["headers"]["task"], args) == ("toolcall.fetch_result", [fetch_id])


def test_retry_returns_to_the_list_with_a_message(ops):
    fetch_id = new_fetch(ops, state="failed")
    client = logged_in(ops, *OPERATOR)
    response = retry(client, fetch_id, next="/ops/fetches/?state=failed")
    assert response.headers["Location"] == "/ops/fetches/?state=failed"
    assert f"Result fetch {fetch_id} is owed again and queued." in client.get("/ops/fetches/").data.decode()


def test_retry_from_the_toolcall_page_returns_to_it(ops):
    toolcall_id = new_toolcall(ops)
    fetch_id = new_fetch(ops, state="failed", toolcall_id=toolcall_id)
    client = logged_in(ops, *OPERATOR)
    page = f"/ops/toolcalls/{toolcall_id}/"
    form = re.search(r'name="next" value="([^"]+)"', client.get(page).data.decode()).group(1)
    response = retry(client, fetch_id, page, next=form)
    assert response.headers["Location"] == page and get_fetch(ops, fetch_id).state == "owed"


def test_retry_does_not_redirect_off_site(ops):
    fetch_id = new_fetch(ops, state="failed")
    response = retry(logged_in(ops, *OPERATOR), fetch_id, next="https://evil.example/")
    assert response.headers["Location"] == "/"


def test_retry_without_a_csrf_token_is_refused(ops, redis_db):
    fetch_id = new_fetch(ops, state="failed")
    response = logged_in(ops, *OPERATOR).post(f"/ops/fetches/{fetch_id}/retry")
    assert response.status_code == 400
    assert get_fetch(ops, fetch_id).state == "failed" and redis_db.llen(CALLBACKS_KEY) == 0


def test_retry_by_a_user_who_is_not_an_admin_is_refused(ops, redis_db):
    fetch_id = new_fetch(ops, state="failed")
    client = logged_in(ops, "candidate", "secret")
    response = client.post(f"/ops/fetches/{fetch_id}/retry", data={"csrf_token": csrf(client.get("/").data)})
    assert response.status_code == 403
    assert get_fetch(ops, fetch_id).state == "failed" and redis_db.llen(CALLBACKS_KEY) == 0


def test_retry_of_a_fetch_that_is_not_failed_changes_nothing(ops, redis_db):
    fetch_id = new_fetch(ops, state="done", last_error="")
    client = logged_in(ops, *OPERATOR)
    retry(client, fetch_id)
    assert get_fetch(ops, fetch_id).state == "done" and redis_db.llen(CALLBACKS_KEY) == 0
    assert "is done, not failed" in client.get("/ops/fetches/").data.decode()


# ---- clients ----------------------------------------------------------------------------------------


def test_an_admin_adds_a_client(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(secret=SECRET))
    assert response.status_code == 303
    acme = clients(ops)["acme"]
    saved = (acme.receive_start_token_url, acme.receive_result_token_url, acme.secret)
    assert saved == ("https://acme.example/start/", "https://acme.example/result/", SECRET)


def test_a_client_without_a_secret_gets_none(ops):
    post_form(logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(secret=""))
    assert clients(ops)["acme"].secret is None


@pytest.mark.parametrize(
    "url", ["ftp://acme.example/", "javascript:alert(1)", "acme.example/start/", "https://", ""]
)
def test_a_client_url_must_be_http_or_https(ops, url):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(start=url))
    assert response.status_code == 400 and b'class="error"' in response.data
    assert "acme" not in clients(ops)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "https://vendor..example.org/result/",
            "invalid vendor URL: host name &#39;vendor..example.org&#39;",
        ),
        ("http://[::1", "invalid vendor URL: Invalid IPv6 URL"),
        ("http://[::1/result/", "invalid vendor URL: Invalid IPv6 URL"),
        ("https://acme.example:99999/result/", "invalid vendor URL: Port out of range 0-65535"),
    ],
)
def test_a_client_url_no_request_can_be_made_to_is_a_field_error(ops, url, reason):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(result=url))
    assert response.status_code == 400
    assert f'<span class="error">{reason}'.encode() in response.data, response.data.decode()
    assert "acme" not in clients(ops)


def test_in_production_a_client_url_must_be_https(ops):
    ops.config["TOOLCALL_PRODUCTION"] = True
    response = post_form(
        logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(result="http://acme.example/r/")
    )
    assert response.status_code == 400 and b"https URL" in response.data


def test_a_taken_client_name_is_a_form_error(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/clients/new/", client_form(name="vendor"))
    assert response.status_code == 400 and b"&#39;vendor&#39; is taken" in response.data
    assert clients(ops)["vendor"].receive_start_token_url == "https://vendor.example.org/start/"


def test_an_admin_edits_a_client_and_its_secret_is_kept(ops):
    with ops.extensions["db"].session() as session:
        session.scalar(select(Client)).secret = SECRET
    url = f"/ops/clients/{clients(ops)['vendor'].id}/"
    form = client_form(name="vendor2", start="http://vendor.example/s/", result="http://vendor.example/r/")
    assert post_form(logged_in(ops, *OPERATOR), url, form).status_code == 303
    edited = clients(ops)["vendor2"]
    assert (edited.receive_start_token_url, edited.secret) == ("http://vendor.example/s/", SECRET)


def test_an_admin_removes_a_clients_secret(ops):
    with ops.extensions["db"].session() as session:
        session.scalar(select(Client)).secret = SECRET
    url = f"/ops/clients/{clients(ops)['vendor'].id}/"
    post_form(logged_in(ops, *OPERATOR), url, client_form(name="vendor", remove_secret="y"))
    assert clients(ops)["vendor"].secret is None


def test_renaming_a_client_to_a_taken_name_is_a_form_error(ops):
    with ops.extensions["db"].session() as session:
        add_client(session, "other")
    url = f"/ops/clients/{clients(ops)['other'].id}/"
    response = post_form(logged_in(ops, *OPERATOR), url, client_form(name="vendor"))
    assert response.status_code == 400 and b"is taken" in response.data
    assert set(clients(ops)) == {"vendor", "other"}


def test_a_client_form_without_a_csrf_token_is_refused(ops):
    response = logged_in(ops, *OPERATOR).post("/ops/clients/new/", data=client_form())
    assert response.status_code == 400 and "acme" not in clients(ops)


def test_the_secret_never_appears_in_html(ops):
    with ops.extensions["db"].session() as session:
        session.scalar(select(Client)).secret = SECRET
    client = logged_in(ops, *OPERATOR)
    edit = f"/ops/clients/{clients(ops)['vendor'].id}/"
    refused = post_form(client, edit, client_form(name="vendor", start="ftp://x/", secret=SECRET))
    pages = [client.get(url).data for url in ["/ops/clients/", edit, "/ops/tools/", "/ops/"]]
    assert refused.status_code == 400 and b">set<" in pages[0]
    assert all(SECRET.encode() not in html for html in [*pages, refused.data])


# ---- tools ------------------------------------------------------------------------------------------


def test_an_admin_adds_a_tool(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/tools/new/", tool_form(ops, restartable=None))
    assert response.status_code == 303
    word = tools(ops)["word"]
    saved = (word.name, word.description, word.restartable, word.deadline_minutes, word.client.name)
    assert saved == ("Word", "Letters and such.", False, 90, "vendor")


def test_a_taken_tool_slug_is_a_form_error(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/tools/new/", tool_form(ops, slug="excel"))
    assert response.status_code == 400 and b"&#39;excel&#39; is taken" in response.data
    assert tools(ops)["excel"].name == "Excel"


@pytest.mark.parametrize("deadline", ["0", "-5", "soon", ""])
def test_a_tool_deadline_must_be_a_positive_number_of_minutes(ops, deadline):
    response = post_form(
        logged_in(ops, *OPERATOR), "/ops/tools/new/", tool_form(ops, deadline_minutes=deadline)
    )
    assert response.status_code == 400 and "word" not in tools(ops)


def test_a_tool_slug_must_be_usable_in_a_url(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/tools/new/", tool_form(ops, slug="my tool/1"))
    assert response.status_code == 400 and "my tool/1" not in tools(ops)


def test_a_tool_needs_an_existing_client(ops):
    response = post_form(logged_in(ops, *OPERATOR), "/ops/tools/new/", {**tool_form(ops), "client": "999"})
    assert response.status_code == 400 and "word" not in tools(ops)


def test_an_admin_edits_a_tool(ops):
    with ops.extensions["db"].session() as session:
        add_client(session, "other")
    url = f"/ops/tools/{tools(ops)['excel'].id}/"
    form = tool_form(ops, slug="excel-2", client="other", name="Excel 2", deadline_minutes="30")
    assert post_form(logged_in(ops, *OPERATOR), url, form).status_code == 303
    edited = tools(ops)["excel-2"]
    assert (edited.name, edited.client.name, edited.deadline_minutes) == ("Excel 2", "other", 30)


def test_renaming_a_tool_to_a_taken_slug_is_a_form_error(ops):
    with ops.extensions["db"].session() as session:
        add_tool(session, session.scalar(select(Client)), "word")
    url = f"/ops/tools/{tools(ops)['word'].id}/"
    response = post_form(logged_in(ops, *OPERATOR), url, tool_form(ops, slug="excel"))
    assert response.status_code == 400 and b"is taken" in response.data
    assert set(tools(ops)) == {"excel", "word"}


def test_the_tool_list_shows_each_tools_client_and_settings(ops):
    html = logged_in(ops, *OPERATOR).get("/ops/tools/").data.decode()
    row = re.search(r'<tr class="tool">(.*?)</tr>', html, re.S).group(1)
    assert "excel" in row and "vendor" in row and "240 min" in row and "yes" in row


def test_the_log_rows_come_from_the_lifecycle_only(ops):
    """The ops pages read the log; they never write it (docs/api.md §6: nothing else goes into that table)."""
    toolcall_id = new_toolcall(ops, [Status.START_TK_SENT])
    fetch_id = new_fetch(ops, state="failed", toolcall_id=toolcall_id)
    client = logged_in(ops, *OPERATOR)
    client.get(f"/ops/toolcalls/{toolcall_id}/")
    retry(client, fetch_id)
    with ops.extensions["db"].session() as session:
        logged = session.scalars(select(ToolCallLog.status).where(ToolCallLog.toolcall_id == toolcall_id))
        assert list(logged) == ["initial", "start-tk-sent"]
        assert session.get(ToolCall, toolcall_id).status == "start-tk-sent"
