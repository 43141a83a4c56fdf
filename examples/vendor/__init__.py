"""The demo vendor ("toolimplementor"): a small exam site that integrates with the toolcall portal.

It is written only from the vendor API (docs/api.md), imports nothing from the portal, and is the reference for
vendors: README.md in this folder walks through the integration step by step. Run it with
``flask --app examples.vendor.app run --port 5001`` (the Procfile's ``vendor`` line).
"""
