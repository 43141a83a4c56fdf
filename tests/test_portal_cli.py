"""Administration and configuration (docs/api.md §8, §3): the CLI commands on an app with its own config,
and the settings' rules for the secret key."""

from __future__ import annotations

import stat
import threading

import pytest
from portal_support import (
    count,
)
from sqlalchemy import inspect, select

from webapp import create_app
from webapp.config import SECRET_KEY_FILE, ConfigurationError, settings
from webapp.models import Client, Exam, User


def invoke(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


def succeeds(app, *args: str) -> str:
    result = invoke(app, *args)
    assert result.exit_code == 0, (
        f"{' '.join(args)} failed ({result.exit_code}): {result.output}{result.exception!r}"
    )
    return result.output


def rows(app, model: type) -> list:
    with app.extensions["db"].session() as session:
        return list(session.scalars(select(model).order_by(model.id)))


@pytest.fixture
def migrated(app):
    succeeds(app, "init-db")
    return app


# ---- init-db, load-demo -----------------------------------------------------------------------------


def test_init_db_creates_the_schema(app):
    assert "up to date" in succeeds(app, "init-db")
    assert {"toolcall_toolcall", "toolcall_resultfetch"} <= set(
        inspect(app.extensions["db"].engine).get_table_names()
    )


def test_init_db_twice_is_safe(migrated):
    with migrated.extensions["db"].session() as session:
        session.add(User(username="ada", password_hash="!"))
    assert "up to date" in succeeds(migrated, "init-db")
    assert [user.username for user in rows(migrated, User)] == ["ada"]


def test_load_demo_twice_leaves_two_users_one_client_one_tool(migrated):
    succeeds(migrated, "load-demo")
    succeeds(migrated, "load-demo")
    with migrated.extensions["db"].session() as session:
        assert (count(session, User), count(session, Client), count(session, Exam)) == (2, 1, 1)


def test_the_demo_data_is_the_specs(migrated):
    succeeds(migrated, "load-demo")
    admin, user = sorted(rows(migrated, User), key=lambda user: user.username)
    assert (admin.username, admin.is_admin, admin.check_password("admin")) == ("admin", True, True)
    assert (user.username, user.is_admin, user.check_password("user")) == ("user", False, True)
    [client], [tool] = rows(migrated, Client), rows(migrated, Exam)
    assert (client.name, tool.slug, tool.client_id) == ("testclient", "my-tool", client.id)


# ---- users, clients, tools --------------------------------------------------------------------------


def test_users_add_saves_a_user_with_a_hashed_password(migrated):
    succeeds(
        migrated,
        *["users", "add", "ada", "--password", "pw-of-ada", "--first-name", "Ada", "--last-name", "Lovelace"],
        *["--email", "ada@example.org", "--extra-time", "--admin"],
    )
    [ada] = rows(migrated, User)
    assert (ada.first_name, ada.last_name, ada.email) == ("Ada", "Lovelace", "ada@example.org")
    assert (ada.extra_time, ada.is_admin) == (True, True)
    assert "pw-of-ada" not in ada.password_hash
    assert ada.check_password("pw-of-ada")


def test_users_add_of_an_existing_name_updates_the_user(migrated):
    succeeds(migrated, "users", "add", "ada", "--password", "old")
    succeeds(migrated, "users", "add", "ada", "--password", "new")
    [ada] = rows(migrated, User)
    assert ada.check_password("new") and not ada.check_password("old")


def test_users_add_without_a_password_is_refused(migrated):
    result = invoke(migrated, "users", "add", "ada")
    assert result.exit_code != 0
    assert "--password" in result.output
    assert rows(migrated, User) == []


def test_clients_add_saves_a_client(migrated):
    succeeds(
        migrated,
        *["clients", "add", "vendor", "--start-url", "https://v.example.org/start/"],
        *["--result-url", "https://v.example.org/result/", "--secret", "s3cret"],
    )
    [client] = rows(migrated, Client)
    assert (client.name, client.receive_start_token_url, client.receive_result_token_url, client.secret) == (
        "vendor",
        "https://v.example.org/start/",
        "https://v.example.org/result/",
        "s3cret",
    )


def test_clients_add_without_a_secret_saves_none(migrated):
    succeeds(migrated, "clients", "add", "vendor", "--start-url", "https://a/", "--result-url", "https://b/")
    assert rows(migrated, Client)[0].secret is None


@pytest.mark.parametrize(
    ("option", "url", "reason"),
    [
        ("--result-url", "https://vendor..example.org/result/", "has an empty label"),
        ("--result-url", "http://[::1", "invalid vendor URL: Invalid IPv6 URL"),
        ("--start-url", "http://[::1/start/", "invalid vendor URL: Invalid IPv6 URL"),
        ("--start-url", "ftp://v.example.org/start/", "vendor URL scheme 'ftp' is not http or https"),
    ],
)
def test_clients_add_with_a_url_no_request_can_be_made_to_fails_and_says_why(migrated, option, url, reason):
    urls = {"--start-url": "https://v.example.org/start/", "--result-url": "https://v.example.org/result/"}
    urls[option] = url
    result = invoke(migrated, "clients", "add", "vendor", *[part for pair in urls.items() for part in pair])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"Invalid value for '{option}'" in result.output and reason in result.output, result.output
    assert "Traceback" not in result.output
    assert rows(migrated, Client) == []


def test_clients_add_in_production_refuses_an_http_url(tmp_path, portal_environment):
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": tmp_path / "instance", "SECRET_KEY": "k",
         "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}", "TOOLCALL_PRODUCTION": True}
    )  # fmt: skip
    try:
        succeeds(app, "init-db")
        urls = ["--start-url", "https://v.example/", "--result-url", "http://v.example/"]
        result = invoke(app, "clients", "add", "v", *urls)
        assert result.exit_code == 2 and "http vendor URLs are refused in production" in result.output
    finally:
        app.extensions["db"].dispose()


def test_tools_add_saves_a_tool_of_a_client(migrated):
    succeeds(migrated, "clients", "add", "vendor", "--start-url", "https://a/", "--result-url", "https://b/")
    succeeds(
        migrated,
        *["tools", "add", "excel", "--client", "vendor", "--name", "Excel"],
        *["--description", "Spreadsheets", "--deadline-minutes", "90", "--not-restartable"],
    )
    [tool] = rows(migrated, Exam)
    assert (tool.slug, tool.name, tool.description) == ("excel", "Excel", "Spreadsheets")
    assert (tool.deadline_minutes, tool.restartable, tool.client_id) == (
        90,
        False,
        rows(migrated, Client)[0].id,
    )


def test_tools_add_defaults_to_240_minutes_and_restartable(migrated):
    succeeds(migrated, "clients", "add", "vendor", "--start-url", "https://a/", "--result-url", "https://b/")
    succeeds(migrated, "tools", "add", "excel", "--client", "vendor", "--name", "Excel")
    [tool] = rows(migrated, Exam)
    assert (tool.deadline_minutes, tool.restartable) == (240, True)


def test_tools_add_for_an_unknown_client_fails_and_says_how_to_add_it(migrated):
    result = invoke(migrated, "tools", "add", "excel", "--client", "nobody", "--name", "Excel")
    assert result.exit_code != 0
    assert "no client 'nobody'" in result.output
    assert "clients add nobody" in result.output
    assert rows(migrated, Exam) == []


# ---- configuration ----------------------------------------------------------------------------------


def test_production_without_a_secret_key_is_refused(tmp_path, portal_environment):
    portal_environment.setenv("TOOLCALL_PRODUCTION", "1")
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        create_app({"INSTANCE_PATH": tmp_path})
    assert not (tmp_path / SECRET_KEY_FILE).exists()


def test_production_set_in_the_apps_config_requires_a_secret_key_too(tmp_path, portal_environment):
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        create_app({"INSTANCE_PATH": tmp_path, "TOOLCALL_PRODUCTION": True})


def test_production_uses_the_secret_key_it_is_given(tmp_path, portal_environment):
    portal_environment.setenv("TOOLCALL_PRODUCTION", "1")
    portal_environment.setenv("SECRET_KEY", "the production key")
    app = create_app({"INSTANCE_PATH": tmp_path})
    assert app.config["SECRET_KEY"] == "the production key"
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert not (tmp_path / SECRET_KEY_FILE).exists()


def test_the_development_key_is_created_once_in_the_instance_folder_and_reused(tmp_path, portal_environment):
    first = create_app({"INSTANCE_PATH": tmp_path}).config["SECRET_KEY"]
    second = create_app({"INSTANCE_PATH": tmp_path}).config["SECRET_KEY"]
    key_file = tmp_path / SECRET_KEY_FILE
    assert len(first) >= 32
    assert first == second == key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_each_instance_folder_has_its_own_development_key(tmp_path, portal_environment):
    one = settings(tmp_path / "one")["SECRET_KEY"]
    other = settings(tmp_path / "other")["SECRET_KEY"]
    assert one != other


def test_processes_starting_together_share_one_development_key(tmp_path, portal_environment):
    starters = 12
    barrier = threading.Barrier(starters)
    keys: list[str] = []

    def start() -> None:
        barrier.wait(timeout=10)
        keys.append(settings(tmp_path)["SECRET_KEY"])

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(keys) == starters
    assert len(set(keys)) == 1 and keys[0]
    assert [path.name for path in tmp_path.iterdir()] == [SECRET_KEY_FILE], "no drafts are left behind"


def test_an_empty_development_key_file_is_reported(tmp_path, portal_environment):
    (tmp_path / SECRET_KEY_FILE).write_text("")
    with pytest.raises(ConfigurationError, match="empty"):
        settings(tmp_path)


def test_secret_key_fallbacks_are_a_comma_separated_list(tmp_path, portal_environment):
    portal_environment.setenv("SECRET_KEY_FALLBACKS", "old key, older key ,")
    assert settings(tmp_path)["SECRET_KEY_FALLBACKS"] == ["old key", "older key"]


def test_a_setting_that_is_not_a_number_is_reported_by_name(tmp_path, portal_environment):
    portal_environment.setenv("TOOLCALL_TOKEN_TIMEOUT_SECS", "ten")
    with pytest.raises(ConfigurationError, match="TOOLCALL_TOKEN_TIMEOUT_SECS"):
        settings(tmp_path)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("many", "must be a whole number of at least 1"), ("0", "must be a whole number of at least 1")],
)
def test_the_cap_of_owed_fetches_must_be_a_whole_number_of_at_least_one(
    tmp_path, portal_environment, value, problem
):
    portal_environment.setenv("TOOLCALL_MAX_OWED_FETCHES", value)
    with pytest.raises(ConfigurationError, match=f"TOOLCALL_MAX_OWED_FETCHES='{value}' {problem}"):
        settings(tmp_path)


def test_the_apps_config_wins_over_the_environment(tmp_path, portal_environment):
    portal_environment.setenv("DATABASE_URL", "postgresql+psycopg://nobody@db.invalid/nothing")
    app = create_app({"INSTANCE_PATH": tmp_path, "DATABASE_URL": f"sqlite:///{tmp_path / 'mine.sqlite3'}"})
    assert app.config["DATABASE_URL"].endswith("mine.sqlite3")
    assert app.config["INSTANCE_PATH"] == str(tmp_path)
