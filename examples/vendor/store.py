"""What the demo vendor keeps: attempts (the portal's start data) and results, in SQLite.

A small SQLite file in the instance folder, so results outlive a request and a restart, and every
process and thread of the vendor sees the same data. A real vendor keeps these in its own database.

- ``attempt``: one per fetched start token; its id is our ``participant_id``. The browser's session
  cookie holds only that id.
- ``result``: the result data under our result token R, served verbatim at ``/result-data/``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS result (
    token TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start_data TEXT NOT NULL,
    started TEXT NOT NULL,
    result_token TEXT UNIQUE REFERENCES result (token)
);
"""


@dataclass(frozen=True)
class Attempt:
    id: int
    start_data: dict
    result_token: str | None


class Store:
    def __init__(self, path: Path | str):
        self.path = str(path)
        with self._transaction() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # commits, or rolls back on an exception
                yield db
        finally:
            db.close()

    def new_attempt(self, start_data: dict) -> int:
        """Keep the start data of a new attempt; its id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO attempt (start_data, started) VALUES (?, ?)",
                (json.dumps(start_data), _now()),
            )
            return cursor.lastrowid

    def attempt(self, attempt_id: object) -> Attempt | None:
        if not isinstance(attempt_id, int):
            return None
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, start_data, result_token FROM attempt WHERE id = ?", (attempt_id,)
            ).fetchone()
        return Attempt(row[0], json.loads(row[1]), row[2]) if row else None

    def finish(self, attempt_id: int, token: str, body: str) -> str:
        """Store result ``body`` under ``token`` as the attempt's result; the attempt's result token.

        An attempt has one result: if it already has one (the form was sent twice), nothing is
        stored and that result's token is returned."""
        with self._transaction() as db:
            db.execute("INSERT INTO result (token, body, created) VALUES (?, ?, ?)", (token, body, _now()))
            updated = db.execute(
                "UPDATE attempt SET result_token = ? WHERE id = ? AND result_token IS NULL",
                (token, attempt_id),
            ).rowcount
            if updated:
                return token
            db.rollback()
            row = db.execute("SELECT result_token FROM attempt WHERE id = ?", (attempt_id,)).fetchone()
        if row is None or row[0] is None:
            raise LookupError(f"no attempt {attempt_id}")
        return row[0]

    def result(self, token: str) -> str | None:
        """The result data stored under ``token`` (JSON text), or None."""
        with self._transaction() as db:
            row = db.execute("SELECT body FROM result WHERE token = ?", (token,)).fetchone()
        return row[0] if row else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
