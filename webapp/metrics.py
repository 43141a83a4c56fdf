"""``/metrics``: the portal's state in Prometheus' text format (``prometheus-client``), for alerts.

Who may read it: a scraper sending ``Authorization: Bearer <TOOLCALL_METRICS_TOKEN>``, or an admin
logged in to the portal (for a look in the browser). Anyone else gets 401 (403 for a logged-in user
who is not an admin); without the setting, only admins can read it.

What it says, each read when scraped and each cheap whatever the data's size:

    toolcall_toolcalls{status}                  ToolCalls in each status (kept with the lifecycle)
    toolcall_fetches{state="owed"|"failed"}     result fetches owed and failed (partial index / index)
    toolcall_fetch_oldest_owed_age_seconds      since the oldest owed fetch was reported
    toolcall_fetch_overdue_seconds              how late the most overdue owed fetch is (0: none is)
    toolcall_queue_messages{queue}              messages waiting in ``callbacks`` and each
                                                ``toolbus.<tool>`` of tools.toml (worker.queues)
    toolcall_broker_up, toolcall_redis_up       1 when the broker (Redis) answered this scrape
    toolbus_worker_up{worker}                   1 for each worker that wrote its state lately
    toolbus_tool_starts_total{tool}             tool instances started (since their launcher started)
    toolbus_tool_restarts_total{tool}           ... of which restarts
    toolbus_calls_failed_total{tool}            failed evals and dos
    toolcall_fetch_attempt_seconds{outcome}     histogram: one result-fetch attempt (the vendor's
                                                answer and recording it), by outcome

A collector built for each scrape reads the database, the broker and Redis; a part that cannot be
read is left out and its ``*_up`` says so, so one broken part does not hide the others.
"""

from __future__ import annotations

import hmac
import logging
import time

import redis
from flask import Blueprint, Response, current_app, request
from flask_login import current_user
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import celeryconfig
from toolbus.descriptors import load_tools
from toolbus.errors import DescriptorError
from webapp import lifecycle, toolbus_status
from webapp.db import get_session
from webapp.lifecycle import Status
from webapp.models import ResultFetch, utcnow
from worker import queues
from worker.records import Records

log = logging.getLogger("webapp.metrics")
bp = Blueprint("metrics", __name__)


def allowed() -> tuple[bool, int]:
    """Whether this request may read the metrics; if not, the status to answer (401 or 403)."""
    token = current_app.config.get("TOOLCALL_METRICS_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True, 200
    if current_user.is_authenticated:
        return bool(current_user.is_admin), 403
    return False, 401


@bp.get("/metrics")
def metrics():
    ok, status = allowed()
    if not ok:
        text = (
            "The metrics are for operators: log in as an admin, or send the metrics token "
            "(Authorization: Bearer <TOOLCALL_METRICS_TOKEN>).\n"
        )
        response = Response(text, status=status, mimetype="text/plain")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="toolcall metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortalCollector(get_session(), current_app.config, current_app.extensions["celery"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class PortalCollector:
    """The metrics of one scrape (``prometheus_client``'s custom-collector protocol)."""

    def __init__(self, session: Session, config, celery) -> None:
        self.session = session
        self.config = config
        self.celery = celery

    def collect(self):
        yield from self._database()
        yield from self._broker()
        yield from self._records()

    # ---- the database ---------------------------------------------------------------------------------

    def _database(self):
        session = self.session
        counted = lifecycle.counts(session)
        toolcalls = GaugeMetricFamily("toolcall_toolcalls", "ToolCalls in each status now", labels=["status"])
        for status in [s.value for s in Status] + sorted(set(counted) - {s.value for s in Status}):
            toolcalls.add_metric([status], counted.get(status, 0))
        yield toolcalls

        fetches = GaugeMetricFamily("toolcall_fetches", "Result fetches owed and failed", labels=["state"])
        for state in ("owed", "failed"):
            n = session.scalar(
                select(func.count()).select_from(ResultFetch).where(ResultFetch.state == state)
            )
            fetches.add_metric([state], n)
        yield fetches

        now = utcnow()
        oldest = session.scalar(select(func.min(ResultFetch.reported_at)).where(ResultFetch.state == "owed"))
        yield GaugeMetricFamily(
            "toolcall_fetch_oldest_owed_age_seconds",
            "Seconds since the oldest owed result fetch was reported (0 when none is owed)",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        due = session.scalar(select(func.min(ResultFetch.next_attempt_at)).where(ResultFetch.state == "owed"))
        yield GaugeMetricFamily(
            "toolcall_fetch_overdue_seconds",
            "Seconds the most overdue owed result fetch is past its next attempt (0 when none is)",
            value=max(0.0, (now - due).total_seconds()) if due else 0.0,
        )

    # ---- the broker -----------------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        names = [celeryconfig.CALLBACKS_QUEUE]
        try:
            tools = load_tools(self.config["TOOLCALL_TOOLS"], check_classes=False)
        except DescriptorError as e:
            log.warning("metrics: the tools file cannot be read: %s", e)
            return names
        return names + sorted({t.queue for t in tools.values()})

    def _broker(self):
        depths = GaugeMetricFamily(
            "toolcall_queue_messages", "Messages waiting in each queue of the broker", labels=["queue"]
        )
        try:
            found = queues.depths(self.celery, self.queue_names())
        except Exception as e:  # the broker is away: say so, and leave the depths out
            log.warning("metrics: the broker cannot be reached: %s", e)
            yield GaugeMetricFamily("toolcall_broker_up", "1 when the broker answered", value=0)
            return
        yield GaugeMetricFamily("toolcall_broker_up", "1 when the broker answered", value=1)
        for name, n in found.items():
            depths.add_metric([name], n)
        yield depths

    # ---- what the workers recorded --------------------------------------------------------------------

    def _records(self):
        try:
            records = Records(toolbus_status.records_redis(self.config["REDIS_URL"]))
            now = time.time()
            workers = records.workers(now)
            starts = records.tool_starts()
            failed = records.failed_calls()
            seconds = records.fetch_seconds()
        except redis.RedisError as e:
            log.warning("metrics: Redis cannot be read: %s", e)
            yield GaugeMetricFamily("toolcall_redis_up", "1 when Redis answered", value=0)
            return
        yield GaugeMetricFamily("toolcall_redis_up", "1 when Redis answered", value=1)

        fresh = toolbus_status.STALE_AFTER * self.config["TOOLCALL_WORKER_STATE_SECS"]
        up = GaugeMetricFamily(
            "toolbus_worker_up",
            "1 for a worker that wrote its state lately, 0 for one gone silent",
            labels=["worker"],
        )
        for w in workers:
            up.add_metric([w.name], 1 if now - w.at <= fresh else 0)
        yield up

        started = CounterMetricFamily("toolbus_tool_starts", "Tool instances started", labels=["tool"])
        restarted = CounterMetricFamily(
            "toolbus_tool_restarts", "Tool instances started again", labels=["tool"]
        )
        by_tool: dict[str, list[int]] = {}
        for s in starts:
            totals = by_tool.setdefault(s.tool, [0, 0])
            totals[0] += s.starts
            totals[1] += s.restarts
        for tool, (n, again) in sorted(by_tool.items()):
            started.add_metric([tool], n)
            restarted.add_metric([tool], again)
        yield started
        yield restarted

        calls = CounterMetricFamily(
            "toolbus_calls_failed", "Tool calls (eval, do) that failed", labels=["tool"]
        )
        for tool, n in sorted(failed.items()):
            calls.add_metric([tool], n)
        yield calls

        histogram = HistogramMetricFamily(
            "toolcall_fetch_attempt_seconds",
            "One result-fetch attempt: the vendor's answer and recording it",
            labels=["outcome"],
        )
        for h in seconds:
            buckets = [(floatToGoString(bound), n) for bound, n in h.buckets]
            histogram.add_metric([h.outcome], buckets, sum_value=h.sum)
        yield histogram
