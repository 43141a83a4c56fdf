"""The ToolBus ops page (/ops/toolbus/) against real tool workers: the workers online with their
queues, pool, calls served and tool restarts, the tools of tools.toml, and the failed calls the
workers recorded (worker.records); and the page when no worker has written its state lately. The
page reads what the workers wrote (every ``STATE_SECS`` here) and asks no worker anything.

Redis database 15 is this module's: the launcher's broker, result backend and records, and the
portal's Redis. The workers run while the tests of ``TestWithWorkers`` run (a class-scoped
launcher), so the tests of a bus without workers, outside the class, never see them.

Host group ``opsview``, shared worker with one child: ``calc`` (internal) and ``probe`` (external,
crashes and hangs on demand); ``recycled`` (internal Counter) has a worker of its own whose child
is replaced after every 2 calls.
"""

from __future__ import annotations

import html as html_text
import re
import time
from pathlib import Path

import pytest
from helpers import REPO, wait_until, write_tools
from portal_support import (
    add_user,
    logged_in,
)
from worker_support import calc, counter, environment, flush, probe, redis_url, running

from toolbus.aterm import parse
from toolbus.descriptors import load_tools
from toolbus.errors import ToolCrashed, ToolError, ToolTimeout
from webapp import create_app
from worker.launcher import forget_tool_starts, node_name, plan
from worker.records import STARTS_KEY, WORKER_FORGOTTEN_SECS, Records, ToolStarts, WorkerState, connect

pytestmark = pytest.mark.process

GROUP = "opsview"
DB = 15
TIMEOUT = 20  # seconds: every call expected to answer
HANG_TIMEOUT = 2  # seconds: the call that hangs is given this long
#: How often the workers write their state (TOOLCALL_WORKER_STATE_SECS): often, so the page is soon
#: up to date.
STATE_SECS = 0.5
OPERATOR = ("operator", "ops-password")
RECYCLE_EVERY = 2
TOOLS = {"calc": calc(), "probe": probe(GROUP), "recycled": counter(restart=RECYCLE_EVERY)}


def portal(tmp_path: Path, tools_path: Path | str, broker: str | None = None):
    """A portal whose broker and Redis are this module's database, with an operator."""
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": tmp_path / "instance",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
            "REDIS_URL": redis_url(DB),
            "CELERY_BROKER_URL": broker or redis_url(DB),
            "CELERY_RESULT_BACKEND": redis_url(DB),
            "SECRET_KEY": "a test key",
            "TOOLCALL_TOOLS": str(tools_path),
            "TOOLCALL_WORKER_STATE_SECS": STATE_SECS,
        }
    )
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_user(session, OPERATOR[0], password=OPERATOR[1]).is_admin = True
    return app


def row(html: str, css_class: str, row_id: str) -> str:
    """The inside of the table row ``<tr class=css_class id=row_id>``."""
    found = re.search(rf'<tr class="{css_class}" id="{re.escape(row_id)}">(.*?)</tr>', html, re.S)
    assert found, f"no row {row_id} in the page"
    return found.group(1)


def cell(row_html: str, css_class: str) -> str:
    """The text of the row's cell ``<td class=css_class ...>``, tags removed, spaces collapsed."""
    found = re.search(rf'<td class="{css_class}(?: [^"]*)?">(.*?)</td>', row_html, re.S)
    assert found, f"no {css_class} cell in {row_html}"
    return html_text.unescape(" ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split()))


def failure_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="failure">(.*?)</tr>', html, re.S)


def failures(html: str) -> list[tuple[str, str, str]]:
    """(tool, call, error class) of each listed failed call, newest first."""
    return [
        (
            cell(r, "tool"),
            cell(r, "call").rsplit(" ", 1)[0],
            re.search(r'<strong class="error-class">([^<]+)</strong>', r).group(1),
        )
        for r in failure_rows(html)
    ]


# ---- with workers -----------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def launcher(tmp_path_factory):
    with (
        environment({"TOOLCALL_WORKER_STATE_SECS": str(STATE_SECS)}),
        running(tmp_path_factory.mktemp("opsview"), TOOLS, group=GROUP, db=DB, concurrency=1) as launcher,
    ):
        yield launcher


@pytest.fixture(scope="class")
def served(launcher) -> dict[str, int]:
    """Calls made once for the class: some fail, one crashes its tool, one hangs it, and the
    recycled tool's child is replaced. Returns the calls each worker got."""
    bus = launcher.bus()
    assert bus.eval("calc", 'compute("1+2")', timeout=TIMEOUT) == parse("3")
    with pytest.raises(ToolError):
        bus.eval("calc", 'compute("1/0")', timeout=TIMEOUT)
    value, error = bus.eval_many("calc", ['compute("6*7")', 'compute("2/0")'], timeout=TIMEOUT)
    assert value == parse("42") and isinstance(error, ToolError)
    bus.eval("probe", "stamp", timeout=TIMEOUT)
    with pytest.raises(ToolCrashed):
        bus.eval("probe", "crash(3)", timeout=TIMEOUT)
    bus.eval("probe", "stamp", timeout=TIMEOUT)  # a fresh probe: the first restart
    with pytest.raises(ToolTimeout):
        bus.eval("probe", "hang", timeout=HANG_TIMEOUT)
    bus.eval("probe", "stamp", timeout=TIMEOUT)  # and the second
    pids = {bus.eval("recycled", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[0] for _ in range(3)}
    assert len(pids) == 2  # the third call ran in the child that replaced the first
    # The workers record a failed call just after its caller has heard of it.
    records = Records(connect(redis_url(DB)))
    wait_until(lambda: len(records.failures()) == 4, timeout=TIMEOUT, what="the 4 failed calls recorded")
    calls = {"toolbus-shared": 8, "toolbus-recycled": 3}
    # The workers write their state every STATE_SECS: until they have, the page shows fewer calls.
    wait_until(
        lambda: (
            {w.name.split(f"-{GROUP}@")[0]: sum(w.total.values()) for w in records.workers(time.time())}
            == calls
        ),
        timeout=TIMEOUT,
        what=f"the workers' states to count {calls}",
    )
    records.redis.close()
    return calls


def toolbus_page(app) -> str:
    try:
        response = logged_in(app, *OPERATOR).get("/ops/toolbus/")
        assert response.status_code == 200
        return response.data.decode()
    finally:
        app.extensions["db"].dispose()


@pytest.fixture(scope="class")
def page(launcher, served, tmp_path_factory) -> str:
    return toolbus_page(portal(tmp_path_factory.mktemp("portal"), launcher.tools_path))


@pytest.fixture(scope="class")
def names(launcher) -> dict[str, str]:
    """Worker (e.g. toolbus-shared) -> its Celery node name."""
    return {name.split(f"-{GROUP}@")[0]: name for name in launcher.worker_names()}


class TestWithWorkers:
    """The page after calls through real workers; the workers run until the last test of the class."""

    def test_every_worker_online_is_listed_with_the_queues_it_serves(self, page, names):
        shared = row(page, "worker", f"worker-{names['toolbus-shared']}")
        recycled = row(page, "worker", f"worker-{names['toolbus-recycled']}")
        assert (
            cell(shared, "queues") == "toolbus.calc toolbus.probe" and cell(shared, "tools") == "calc, probe"
        )
        assert cell(recycled, "queues") == "toolbus.recycled" and cell(recycled, "tools") == "recycled"
        assert len(re.findall(r'<tr class="worker"', page)) == 2

    def test_a_worker_shows_its_pool_and_concurrency(self, page, names):
        shared = cell(row(page, "worker", f"worker-{names['toolbus-shared']}"), "pool")
        recycled = cell(row(page, "worker", f"worker-{names['toolbus-recycled']}"), "pool")
        assert shared.startswith("prefork × 1") and "fresh child" not in shared
        assert recycled.startswith(f"prefork × 1 a fresh child every {RECYCLE_EVERY} calls")

    def test_a_worker_shows_the_calls_it_served(self, page, names, served):
        for worker, calls in served.items():
            shown = cell(row(page, "worker", f"worker-{names[worker]}"), "calls")
            assert shown.split()[0] == str(calls), shown
        shared = cell(row(page, "worker", f"worker-{names['toolbus-shared']}"), "calls")
        assert "toolbus.eval 7" in shared and "toolbus.eval_many 1" in shared

    def test_a_crashed_and_a_hung_tool_count_as_restarts_of_their_worker(self, page, names):
        shared = row(page, "worker", f"worker-{names['toolbus-shared']}")
        # calc started once; probe three times: at first, after its crash, after its timeout.
        assert (cell(shared, "starts"), cell(shared, "restarts")) == ("4", "2")
        assert cell(row(page, "tool", "tool-probe"), "restarts") == "3 / 2"
        assert cell(row(page, "tool", "tool-calc"), "restarts") == "1 / 0"

    def test_a_recycled_child_counts_as_a_restart_of_its_tool(self, page, names):
        recycled = row(page, "worker", f"worker-{names['toolbus-recycled']}")
        assert (cell(recycled, "starts"), cell(recycled, "restarts")) == ("2", "1")

    def test_the_failed_calls_are_listed_newest_first_with_their_errors(self, page):
        assert failures(page) == [
            ("probe", "hang", "ToolTimeout"),
            ("probe", "crash(3)", "ToolCrashed"),
            ("calc", 'compute("2/0")', "ToolError"),
            ("calc", 'compute("1/0")', "ToolError"),
        ]

    def test_a_failed_call_names_its_worker_and_why(self, page, names):
        crash = next(r for r in failure_rows(page) if "crash(3)" in r)
        assert cell(crash, "worker") == names["toolbus-shared"]
        assert "status 3" in cell(crash, "error-message")  # the tool's exit status, from the worker

    def test_a_failed_call_in_a_batch_is_recorded_as_the_batch_task(self, page):
        batch = next(r for r in failure_rows(page) if "2/0" in r)
        assert cell(batch, "call").endswith(" toolbus.eval_many")

    def test_each_tool_shows_the_workers_that_serve_its_queue(self, page, names):
        assert cell(row(page, "tool", "tool-calc"), "workers") == names["toolbus-shared"]
        assert cell(row(page, "tool", "tool-recycled"), "workers") == names["toolbus-recycled"]

    def test_the_page_asks_no_worker_so_it_lists_them_with_the_broker_away(
        self, launcher, served, tmp_path, names
    ):
        """A broadcast would need the broker; the workers' own records do not."""
        html = toolbus_page(portal(tmp_path, launcher.tools_path, broker="redis://127.0.0.1:1/0"))
        assert len(re.findall(r'<tr class="worker"', html)) == 2
        assert cell(row(html, "worker", f"worker-{names['toolbus-shared']}"), "calls").split()[0] == "8"


# ---- the tools, whether workers run or not ----------------------------------------------------------


def test_every_tool_of_tools_toml_is_listed_with_its_queue_host_group_and_signatures(
    tmp_path, portal_environment
):
    app = portal(tmp_path, write_tools(tmp_path, TOOLS))
    try:
        html = logged_in(app, *OPERATOR).get("/ops/toolbus/").data.decode()
    finally:
        app.extensions["db"].dispose()
    probe_row, recycled_row = row(html, "tool", "tool-probe"), row(html, "tool", "tool-recycled")
    assert cell(probe_row, "queue") == "toolbus.probe" and cell(probe_row, "host") == GROUP
    assert cell(probe_row, "kind").startswith("external {python}") and cell(probe_row, "restart") == "never"
    assert (
        "eval(crash(&lt;int&gt;), &lt;int&gt;)" in probe_row
        and "event(note(&lt;int&gt;), &lt;term&gt;)" in probe_row
    )
    assert cell(recycled_row, "kind") == "internal tests.fixtures.worker_tools:Counter"
    assert (
        cell(recycled_row, "host").startswith("ToolBus")
        and cell(recycled_row, "restart") == "every 2 requests"
    )
    assert re.findall(r'<tr class="tool" id="tool-([^"]+)">', html) == ["calc", "probe", "recycled"]


def test_a_tools_file_that_cannot_be_read_is_shown_not_an_error(tmp_path, portal_environment):
    app = portal(tmp_path, tmp_path / "missing.toml")
    try:
        response = logged_in(app, *OPERATOR).get("/ops/toolbus/")
    finally:
        app.extensions["db"].dispose()
    assert response.status_code == 200
    assert "missing.toml: no such file" in response.data.decode()


# ---- without workers --------------------------------------------------------------------------------


@pytest.fixture(name="quiet_db")
def quiet_db_fixture():
    """This module's database with no worker on it (the class's launcher is stopped by now)."""
    flush(DB)
    yield
    flush(DB)


def test_when_no_worker_has_written_its_state_the_page_says_so(tmp_path, portal_environment, quiet_db):
    html = toolbus_page(portal(tmp_path, REPO / "tools.toml"))
    assert '<tr class="worker"' not in html
    assert 'id="no-workers">No worker has written its state within 1.5 s' in html


def test_a_worker_not_heard_from_lately_is_listed_apart(tmp_path, portal_environment, quiet_db):
    records = Records(connect(redis_url(DB)))
    try:
        stale = WorkerState(
            "toolbus-gone@host", time.time() - 60, 123, 600, {"toolbus.eval:calc": 5}, {}, ["toolbus.calc"]
        )
        records.worker_seen(stale)
        html = toolbus_page(portal(tmp_path, REPO / "tools.toml"))
    finally:
        records.redis.close()
    assert '<tr class="worker"' not in html and 'id="no-workers">' in html
    assert re.search(r'id="silent-toolbus-gone@host">toolbus-gone@host: last heard from 6\d s ago', html)
    assert "no worker online" in cell(row(html, "tool", "tool-calc"), "workers")


def test_a_worker_that_stops_takes_itself_off_the_page(tmp_path, portal_environment, quiet_db):
    with (
        environment({"TOOLCALL_WORKER_STATE_SECS": str(STATE_SECS)}),
        running(tmp_path, {"calc": calc()}, group=GROUP, db=DB, concurrency=1, flush_db=False) as launcher,
    ):
        records = Records(connect(redis_url(DB)))
        wait_until(lambda: len(records.workers(time.time())) == 1, timeout=TIMEOUT, what="the worker's state")
        assert (
            len(re.findall(r'<tr class="worker"', toolbus_page(portal(tmp_path, launcher.tools_path)))) == 1
        )
    try:
        assert records.workers(time.time()) == []  # removed on the way out, not left to go stale
    finally:
        records.redis.close()


def test_when_redis_cannot_be_read_the_page_says_so(tmp_path, portal_environment, quiet_db):
    app = portal(tmp_path, REPO / "tools.toml")
    client = logged_in(app, *OPERATOR)
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # after logging in: the login's limits use Redis too
    try:
        response = client.get("/ops/toolbus/")
    finally:
        app.extensions["db"].dispose()
    html = response.data.decode()
    assert response.status_code == 200
    assert 'id="records-problem">The Redis at redis://127.0.0.1:1/0 could not be read' in html
    assert 'id="no-workers">No workers can be listed' in html


def test_without_failed_calls_the_page_says_so(tmp_path, portal_environment, quiet_db):
    html = toolbus_page(portal(tmp_path, REPO / "tools.toml"))
    assert 'id="no-failures">No failed calls recorded.' in html


# ---- the launcher -----------------------------------------------------------------------------------


def test_the_starts_of_a_worker_gone_for_a_day_are_forgotten(quiet_db):
    """Every worker name, tool and child slot ever seen would stay in the hash for ever (worker names
    carry the host name: a host replaced is a new name). A field whose worker has written no state and
    no start for WORKER_FORGOTTEN_SECS goes, whoever writes or reads the hash next."""
    now = time.time()
    long_ago = now - WORKER_FORGOTTEN_SECS - 60
    records = Records(connect(redis_url(DB)))
    try:
        records.tool_started("toolbus-shared-old@gone", "calc", 0, 4, at=long_ago)
        records.worker_seen(WorkerState("toolbus-shared-steady@here", now, 1, 1, {}, {}, []))
        records.tool_started("toolbus-shared-steady@here", "calc", 1, 1, at=long_ago)
        records.tool_started("toolbus-shared-new@there", "calc", 0, 2, at=now)
        assert records.tool_starts(now) == [
            ToolStarts("toolbus-shared-new@there", "calc", 0, 2),
            ToolStarts("toolbus-shared-steady@here", "calc", 1, 1),  # its worker still runs
        ]
        assert records.redis.hlen(STARTS_KEY) == 2
        records.tool_started("toolbus-shared-old@gone", "calc", 0, 1, at=now)  # it came back: counts afresh
        assert ToolStarts("toolbus-shared-old@gone", "calc", 0, 1) in records.tool_starts(now)
    finally:
        records.redis.close()


def test_a_launcher_starts_the_restart_counts_of_its_own_workers_afresh(tmp_path, quiet_db):
    """Restarts count from the launcher's start; the counts of other workers stay."""
    specs = plan(load_tools(write_tools(tmp_path, TOOLS), check_classes=False), GROUP, 1)
    mine = [node_name(spec, GROUP) for spec in specs]
    records = Records(connect(redis_url(DB)))
    try:
        for worker in mine:
            records.tool_started(worker, "calc", 0, 3)
        records.tool_started("toolbus-shared-elsewhere@other", "calc", 0, 5)
        with environment({"REDIS_URL": redis_url(DB)}):  # as the launcher gets it
            forget_tool_starts(specs, GROUP)
        assert records.tool_starts() == [ToolStarts("toolbus-shared-elsewhere@other", "calc", 0, 5)]
    finally:
        records.redis.close()
