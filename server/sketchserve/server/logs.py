"""Structured logs: one line per event, ``key=value`` pairs or a JSON object.

Log an event with fields: ``log.info("listening", extra=fields(port=50051))``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

FIELDS_ATTR = "kv"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` mapping that attaches ``values`` to a log record."""
    return {FIELDS_ATTR: values}


def _record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": formatter.formatTime(record, TIME_FORMAT),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    out.update(getattr(record, FIELDS_ATTR, {}))
    if record.exc_info:
        out["traceback"] = formatter.formatException(record.exc_info)
    return out


def _kv_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _record_fields(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record, self), default=str)


def configure_logging(fmt: str, level: str) -> None:
    """Route the root logger to stderr in the chosen format (called once, by ``main``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
