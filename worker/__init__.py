"""The Celery layer: the Celery app, the ToolBus tasks, per-process tool ownership, the event
channel, the Bus client and the worker launcher (``python -m worker tools``)."""
