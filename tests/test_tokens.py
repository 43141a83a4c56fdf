"""Start tokens (docs/api.md §3): 256 random bits, URL-safe, kept in Redis with a TTL, used up atomically."""

from __future__ import annotations

import base64
import re
import threading
import time

from portal_support import redis_client

from webapp.tokens import KEY, StartTokens

TTL = 200
URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def test_a_token_is_256_random_bits_of_url_safe_text(redis_db):
    tokens = StartTokens(redis_db, TTL)
    issued = [tokens.issue(7) for _ in range(50)]
    for token in issued:
        assert URL_SAFE.fullmatch(token), token
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 256
    assert len(set(issued)) == len(issued)


def test_a_token_is_kept_as_the_plain_toolcall_id_with_the_ttl(redis_db):
    token = StartTokens(redis_db, TTL).issue(42)
    assert redis_db.get(KEY.format(token)) == b"42"  # nothing pickled
    assert 0 < redis_db.ttl(KEY.format(token)) <= TTL


def test_consume_returns_the_toolcall_id_once(redis_db):
    tokens = StartTokens(redis_db, TTL)
    token = tokens.issue(42)
    assert tokens.consume(token) == 42
    assert tokens.consume(token) is None


def test_consume_of_an_unknown_token_returns_none(redis_db):
    assert StartTokens(redis_db, TTL).consume("never-issued") is None


def test_peek_names_the_toolcall_and_leaves_the_token_live(redis_db):
    tokens = StartTokens(redis_db, TTL)
    token = tokens.issue(42)
    assert tokens.peek(token) == 42
    assert tokens.peek("never-issued") is None
    assert tokens.consume(token) == 42


def test_of_twenty_concurrent_consumers_exactly_one_gets_the_toolcall(redis_db):
    token = StartTokens(redis_db, TTL).issue(42)
    consumers = 20
    barrier = threading.Barrier(consumers)
    results: list[int | None] = []
    lock = threading.Lock()

    def consume() -> None:
        client = redis_client()  # a connection of its own
        try:
            barrier.wait(timeout=10)
            value = StartTokens(client, TTL).consume(token)
            with lock:
                results.append(value)
        finally:
            client.close()

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(results) == consumers
    assert sorted(results, key=lambda value: value is not None) == [None] * (consumers - 1) + [42]


def test_an_expired_token_is_gone(redis_db):
    tokens = StartTokens(redis_db, TTL)
    token = tokens.issue(42)
    key = KEY.format(token)
    redis_db.pexpire(key, 5)  # its lifetime runs out in 5 ms instead of 200 s
    deadline = time.monotonic() + 5
    while redis_db.exists(key) and time.monotonic() < deadline:
        pass  # a bounded poll; every EXISTS is a round trip to Redis
    assert not redis_db.exists(key), "Redis did not expire the key within 5 s"
    assert tokens.consume(token) is None
