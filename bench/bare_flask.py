"""The baseline of bench/start_storm.py: a bare Flask app served by the same gunicorn command.

    gunicorn --workers 2 --threads 4 'bench.bare_flask:create_app()'

One endpoint, ``GET /``, answering a small JSON document: no database, no session, no templates.
"""

from __future__ import annotations

from flask import Flask, jsonify


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index():
        return jsonify({"type": "ok", "data": {}})

    return app
