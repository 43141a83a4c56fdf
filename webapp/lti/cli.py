"""The LTI commands::

    flask --app webapp lti-tools add NAME --login-url URL --launch-url URL [--redirect-uri URL]...
          (--jwks-url URL | --public-key-file PEM) [--deep-linking-url URL] [--no-names] [--json]
    flask --app webapp lti-keys rotate

``lti-tools add`` registers a tool (or changes its registration, keeping its ids) and prints what
the tool's administrator needs; with ``--json`` exactly one JSON object, in the field names of
PyLTI1p3's tool configuration, and nothing else on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from webapp.lti import keys, registrations

lti_tools = AppGroup("lti-tools", help="Manage LTI 1.3 tools (clients whose exams launch through LTI).")
lti_keys = AppGroup("lti-keys", help="Manage the platform's LTI signing keys.")


@lti_tools.command("add")
@click.argument("name")
@click.option("--login-url", required=True, help="the tool's OIDC login initiation URL")
@click.option("--launch-url", required=True, help="where launches go (an exam may name its own)")
@click.option(
    "--redirect-uri", "redirect_uris", multiple=True, help="allowed redirect_uri (default: the launch URL)"
)
@click.option("--jwks-url", help="the tool's key set URL")
@click.option(
    "--public-key-file", type=click.Path(exists=True, dir_okay=False), help="the tool's public key (PEM)"
)
@click.option("--deep-linking-url", help="where deep-linking launches go (default: the launch URL)")
@click.option("--no-names", is_flag=True, help="send no names and e-mail addresses")
@click.option("--json", "as_json", is_flag=True, help="print the registration as one JSON object")
def lti_tools_add(
    name, login_url, launch_url, redirect_uris, jwks_url, public_key_file, deep_linking_url, no_names, as_json
):
    """Register (or change) an LTI 1.3 tool."""
    if bool(jwks_url) == bool(public_key_file):
        raise click.UsageError("give the tool's key with exactly one of --jwks-url and --public-key-file")
    settings = registrations.ToolSettings(
        login_url=login_url,
        launch_url=launch_url,
        redirect_uris=redirect_uris,
        jwks_url=jwks_url,
        public_key=Path(public_key_file).read_text() if public_key_file else None,
        deep_linking_url=deep_linking_url,
        send_names=not no_names,
    )
    config = current_app.config
    with current_app.extensions["db"].session() as session:
        try:
            registration = registrations.save(session, name, settings, bool(config["TOOLCALL_PRODUCTION"]))
        except registrations.RegistrationError as e:
            raise click.UsageError(str(e)) from None
        issuer = config["TOOLCALL_PUBLIC_URL"]
        if as_json:
            click.echo(json.dumps(registrations.configuration(registration, issuer)))
            return
        click.echo(f"LTI tool {name} saved. Give its administrator the platform's settings:")
        for label, value in registrations.describe(registration, issuer):
            click.echo(f"  {label + ':':26} {value}")


@lti_keys.command("rotate")
def lti_keys_rotate():
    """Make a new platform signing key current; the previous ones stay published for the overlap."""
    config = current_app.config
    with current_app.extensions["db"].session() as session:
        key = keys.rotate(session, config)
        kid = key.kid
    click.echo(
        f"platform key {kid} is current; the previous keys stay in the key set for "
        f"{config['TOOLCALL_LTI_KEY_OVERLAP_DAYS']:g} days (TOOLCALL_LTI_KEY_OVERLAP_DAYS)"
    )


COMMANDS = (lti_tools, lti_keys)
