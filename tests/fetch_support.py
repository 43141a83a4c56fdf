"""The queued result fetch's test harness: a portal with a real ``callbacks`` worker and a vendor.

``running_portal(directory, database_url, redis_url, stub, name)`` migrates the database, builds
the portal app (Flask's test client, in this process) and starts one real ``callbacks`` worker (the
Procfile's line, thread pool) on the same database, with the given Redis database as broker and
result backend (flushed before and after); it yields a ``Portal``. The worker retries quickly
(``TOOLCALL_FETCH_BACKOFF_BASE_SECS``) and its sweep re-queues at once
(``TOOLCALL_REQUEUE_GRACE_SECS=0``); the sweep runs only when a test sends it (no beat).

A ``Portal`` plays the operator, the start page and the vendor's side of the API: each test makes
a client, tool and user of its own (``new_vendor``), starts an attempt and fetches its start data
(``begin``), scripts what the vendor's result URL answers (``stub.script``), reports the result
(``report``) and waits -- a bounded poll of the database -- until the fetch is ``done`` or
``failed`` (``wait_fetch``). Used by test_result_fetch.py and test_vendor_faults.py.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from callbacks_worker import CallbacksWorker
from flask import Flask
from helpers import wait_until
from portal_support import PORTAL_ENVIRONMENT, add_client, add_tool, add_user, empty_redis
from sqlalchemy import select, update
from vendor_stub import VendorStub

from webapp import create_app, lifecycle
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import Exam, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, User

SECRET_KEY = "the result fetch tests' key"
#: Retries wait 0.1-0.2 s, 0.2-0.4 s, ... instead of 5-10 s, 10-20 s, ...
BACKOFF_BASE_SECS = 0.1
#: The longest any test waits for the worker.
WAIT = 30.0


_names = itertools.count(1)


@dataclass(frozen=True)
class Vendor:
    name: str
    tool_id: int
    user_id: int


@dataclass(frozen=True)
class Attempt:
    toolcall_id: int
    start: dict  # the start data the vendor fetched: persnr, exam, exam_kind, system, ...


class Portal:
    """The portal's HTTP API and database, its worker, and the vendor stub, as one test sees them."""

    def __init__(self, app: Flask, worker: CallbacksWorker, stub: VendorStub, broker: redis.Redis):
        self.app = app
        self.db: Database = app.extensions["db"]
        self.http = app.test_client()
        self.worker = worker
        self.stub = stub
        self.broker = broker

    # ---- setup, as the operator and the start page do it -------------------------------------------

    def new_vendor(self, secret: str | None = None, deadline_minutes: int = 240) -> Vendor:
        name = f"v{next(_names)}-{secrets.token_hex(3)}"
        with self.db.session() as session:
            client = add_client(session, name)
            client.receive_result_token_url = self.stub.result_url(name)
            client.secret = secret
            tool = add_tool(session, client, f"{name}-exam")
            tool.deadline_minutes = deadline_minutes
            user = add_user(session, f"{name}-user")
            return Vendor(name, tool.id, user.id)

    def start_attempt(self, vendor: Vendor) -> tuple[int, str]:
        """A new attempt whose start token was issued, as the start page makes it: (id, token)."""
        with self.db.session() as session:
            tool, user = session.get(Exam, vendor.tool_id), session.get(User, vendor.user_id)
            toolcall = lifecycle.create(session, tool, user, "attempt started by the test")
            token = self.app.extensions["start_tokens"].issue(toolcall.id)
            lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "start token issued"))
            return toolcall.id, token

    def begin(self, vendor: Vendor, secret: str | None = None) -> Attempt:
        """An attempt whose start data the vendor has fetched (``start-data-sent``), authenticating
        with ``secret`` if given (docs/api.md §3)."""
        toolcall_id, token = self.start_attempt(vendor)
        target = f"/fetch-token/?access_token={token}"
        headers = {}
        if secret is not None:
            stamp = int(time.time())
            message = f"{stamp}\nGET\n{target}".encode()
            digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
            headers["X-Toolcall-Auth"] = f"{vendor.name} {stamp} {digest}"
        response = self.http.get(target, headers=headers)
        assert response.status_code == 200, response.data
        return Attempt(toolcall_id, response.json["data"])

    # ---- the vendor's side -------------------------------------------------------------------------

    def report(self, vendor: Vendor, token: str) -> None:
        response = self.http.get("/result/", query_string={"access_token": token, "client": vendor.name})
        assert response.status_code == 200, response.data
        assert response.json == {"type": "ok", "token": token, "data": {}}

    def requests(self, vendor: Vendor, token: str | None = None):
        return self.stub.requests(vendor.name, token)

    # ---- what the portal did -----------------------------------------------------------------------

    def fetch(self, vendor: Vendor, token: str) -> ResultFetch | None:
        with self.db.session() as session:
            query = select(ResultFetch).where(ResultFetch.client.has(name=vendor.name))
            return session.scalar(query.where(ResultFetch.token == token))

    def fetches(self, vendor: Vendor) -> list[ResultFetch]:
        with self.db.session() as session:
            return list(session.scalars(select(ResultFetch).where(ResultFetch.client.has(name=vendor.name))))

    def wait_fetch(self, vendor: Vendor, token: str, states=("done", "failed")) -> ResultFetch:
        """The fetch of (vendor, token) once its state is one of ``states`` (bounded wait)."""
        found: list[ResultFetch] = []

        def settled() -> bool:
            fetch = self.fetch(vendor, token)
            found[:] = [fetch] if fetch is not None else []
            return fetch is not None and fetch.state in states

        try:
            wait_until(settled, timeout=WAIT, what=f"the fetch of {token!r} to be {' or '.join(states)}")
        except AssertionError as e:
            raise AssertionError(
                f"{e}; the fetch: {vars(found[0]) if found else None}\n{self.worker.log()}"
            ) from None
        return found[0]

    def log(self, toolcall_id: int) -> list[str]:
        with self.db.session() as session:
            rows = session.scalars(
                select(ToolCallLog.status)
                .where(ToolCallLog.toolcall_id == toolcall_id)
                .order_by(ToolCallLog.id)
            )
            return list(rows)

    def toolcall(self, toolcall_id: int) -> ToolCall:
        with self.db.session() as session:
            return session.get(ToolCall, toolcall_id)

    def results(self, toolcall_id: int) -> list[ToolCallResult]:
        with self.db.session() as session:
            query = select(ToolCallResult).where(ToolCallResult.toolcall_id == toolcall_id)
            return list(session.scalars(query.order_by(ToolCallResult.id)))

    def change(self, model: type, row_id: int, **values) -> None:
        """Set columns of a row directly (to make it look older than it is)."""
        with self.db.session() as session:
            session.execute(update(model).where(model.id == row_id).values(**values))

    # ---- the worker --------------------------------------------------------------------------------

    def send_fetch(self, fetch_id: int):
        """A ``toolcall.fetch_result`` message, as ``/result/`` sends it; returns its AsyncResult."""
        return self.worker.celery.send_task("toolcall.fetch_result", args=[fetch_id], queue="callbacks")

    def sweep(self) -> dict:
        """Run ``toolcall.sweep`` on the worker, as beat would have it; returns its counts.

        The task keeps no result for beat's runs (``ignore_result``); this message asks for it."""
        message = self.worker.celery.send_task("toolcall.sweep", queue="callbacks", ignore_result=False)
        return message.get(timeout=WAIT)


def result_body(attempt: Attempt, token: str, **data) -> dict:
    """The result a vendor returns for ``attempt`` under its result token (docs/api.md §4)."""
    start = attempt.start
    return {
        "token": token,
        "type": "result",
        "timestamp": "2025-03-04T05:06:07+00:00",
        "data": {
            "persnr": start["persnr"],
            "participant_id": "P-1017",
            "exam": start["exam"],
            "passed": True,
            "score": 42,
            "system": start["system"],
            "exam_type": start["exam_kind"],
            **data,
        },
    }


def new_token() -> str:
    return f"R-{secrets.token_hex(8)}"


def running_portal(
    directory: Path,
    database_url: str,
    redis_url: str,
    stub: VendorStub,
    name: str,
    production: bool = False,
    worker_settings: dict[str, str] | None = None,
) -> Iterator[Portal]:
    """A migrated database, a portal app and a callbacks worker on it; everything stopped after.

    ``production`` sets ``TOOLCALL_PRODUCTION`` for both (https-only vendor URLs, address checks);
    ``worker_settings`` are more of the worker's environment (they win over the defaults here)."""
    with empty_redis(redis_url) as broker:
        database = Database(database_url)
        database.upgrade()
        database.dispose()
        instance = directory / "instance"
        settings = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "SECRET_KEY": SECRET_KEY,
        }
        if production:
            settings["TOOLCALL_PRODUCTION"] = "1"
        with pytest.MonkeyPatch.context() as environment:
            for variable in PORTAL_ENVIRONMENT:
                environment.delenv(variable, raising=False)
            app = create_app(
                {**settings, "TESTING": True, "INSTANCE_PATH": instance, "TOOLCALL_RATELIMIT": False}
            )
        worker = CallbacksWorker(
            name,
            directory / f"{name}.log",
            {
                **settings,
                "TOOLCALL_INSTANCE": str(instance),
                "TOOLCALL_FETCH_BACKOFF_BASE_SECS": str(BACKOFF_BASE_SECS),
                "TOOLCALL_REQUEUE_GRACE_SECS": "0",
                **(worker_settings or {}),
            },
        )
        worker.start()
        try:
            worker.wait_ready()
            yield Portal(app, worker, stub, broker)
        finally:
            try:
                worker.stop()
            finally:
                app.extensions["db"].dispose()
                app.extensions["celery"].close()
