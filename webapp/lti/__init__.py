"""The portal as an LTI 1.3 platform: exams hosted by LTI 1.3 tools.

An LTI tool is a client with a registration; its exams start from the same start button, move
through the same ToolCall lifecycle and finish with a score the tool publishes (AGS).

    models.py        the tables
    vocabulary.py    claim names, scopes, roles and media types of the LTI specifications
    keys.py          the platform's signing keys: creation, rotation, the key set, signing
    registrations.py registering a tool; the configuration a tool's administrator needs
    tool_keys.py     a tool's keys (key set URL or PEM) and verifying what a tool signed
    transient.py     nonces, jtis, launch hints, deep-linking data, access tokens (Redis)
    launch.py        the OIDC launch: login initiation, the authorization checks, the id_token
    deep_linking.py  the deep-linking request and the verified response that creates exams
    access.py        the token endpoint (client assertion) and bearer access tokens
    grades.py        AGS: line items, scores (finishing the attempt), results
    members.py       NRPS: the members of a context
    problems.py      recent refusals, shown on the ops pages
    views.py         the browser's endpoints (key set, authorization, deep-linking return)
    services.py      token, AGS and NRPS over HTTP
    admin.py, cli.py the ops pages and the commands

The workers load only the tables (through ``webapp.models``); the modules without Flask take a
session and the settings, the blueprints and commands are imported inside ``create_app``.
"""
