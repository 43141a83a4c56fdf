"""The broker is swappable (docs/toolbus.md §6): the core of the worker suite with RabbitMQ as the Celery broker
(results and events stay in Redis, db 13).

Without RabbitMQ (at 127.0.0.1:5672, or TOOLCALL_TEST_RABBITMQ_URL) these tests are skipped on a workstation and fail in CI
(``CI=true``), where RabbitMQ is part of the environment.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from helpers import wait_until
from worker_support import RABBITMQ_URL, broker_reachable, calc, counter, emitter, running

from toolbus.aterm import parse
from toolbus.errors import SignatureError, ToolError

pytestmark = pytest.mark.process

GROUP = "rabbit"
TIMEOUT = 20
#: Tool names of this run: the queues on RabbitMQ are durable, so a run never meets another's.
SUFFIX = uuid.uuid4().hex[:8]
CALC, COUNTER, EMITTER = f"calc_{SUFFIX}", f"counter_{SUFFIX}", f"emitter_{SUFFIX}"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    if not broker_reachable(RABBITMQ_URL):
        message = f"RabbitMQ is not reachable at {RABBITMQ_URL}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: RabbitMQ is required)")
        pytest.skip(message)
    tools = {CALC: calc(), COUNTER: counter(), EMITTER: emitter()}
    with running(
        tmp_path_factory.mktemp("rabbit"), tools, group=GROUP, db=13, broker=RABBITMQ_URL, concurrency=1
    ) as launcher:
        yield launcher
        _delete_queues(launcher, tools)


def _delete_queues(launcher, tools) -> None:
    """The durable queues and exchanges of this run leave the broker with it."""
    app = launcher.bus().app
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for name in tools:
            channel.queue_delete(f"toolbus.{name}")
            channel.exchange_delete(f"toolbus.{name}")


@pytest.fixture(scope="module")
def bus(launcher):
    bus = launcher.bus()
    assert bus.app.conf.broker_url.startswith("amqp://")
    assert bus.app.conf.result_backend.startswith("redis://")
    return bus


def test_the_workers_use_rabbitmq(launcher):
    log = launcher.log(400)
    assert "transport:   amqp://" in log


def test_eval(bus):
    assert bus.eval(CALC, 'compute("6*7")', timeout=TIMEOUT) == parse("42")


def test_do(bus):
    result = bus.app.AsyncResult(bus.do(CALC, 'store("x", 5)'))
    assert result.get(timeout=TIMEOUT) is None
    assert bus.eval(CALC, 'compute("x*2")', timeout=TIMEOUT) == parse("10")


def test_eval_many(bus):
    calls = [f"add({i},1)" for i in range(5)] + ['fail("no")']
    results = bus.eval_many(COUNTER, calls, timeout=TIMEOUT)
    assert results[:5] == [parse(str(i + 1)) for i in range(5)]
    assert isinstance(results[5], ToolError)


def test_errors(bus):
    with pytest.raises(ToolError, match="broken"):
        bus.eval(COUNTER, 'fail("broken")', timeout=TIMEOUT)
    raw = bus.app.send_task(
        "toolbus.eval",
        kwargs={"tool": COUNTER, "call": 'add("1",2)', "deadline": time.time() + TIMEOUT},
        queue=f"toolbus.{COUNTER}",
    )
    with pytest.raises(SignatureError):
        raw.get(timeout=TIMEOUT)


def test_events_and_acks(bus):
    bus.do(EMITTER, "emit(2)")
    first = bus.get_event(EMITTER, "note(N?)", timeout=TIMEOUT)
    assert (first.tool, first.term) == (EMITTER, parse("note(1)"))
    bus.ack(first, "ok")
    second = bus.get_event(EMITTER, "note(N?)", timeout=TIMEOUT)
    assert second.term == parse("note(2)")
    bus.ack(second, "ok")
    wait_until(
        lambda: len(bus.eval(EMITTER, "acks", timeout=TIMEOUT)) >= 2, TIMEOUT, "the acks to reach the tool"
    )
    assert list(bus.eval(EMITTER, "acks", timeout=TIMEOUT)) == [
        parse("ack(note(1),ok)"),
        parse("ack(note(2),ok)"),
    ]
