"""Structured logs: one line per event, ``key=value`` pairs or a JSON object.

Log an event with fields: ``log.info("listening", extra=fields(port=50051))``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
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


class RateLimitedLog:
    """At most one record per ``interval_s`` for one event; the next one counts those left out.

    For events a caller can provoke at will (undecodable requests, refused tokens):
    one line per interval with ``suppressed=N``, never a traceback, never a flood.
    """

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **values: Any) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(event)
            if last is not None and now - last < self._interval_s:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return
            self._last[event] = now
            suppressed = self._suppressed.pop(event, 0)
        self._logger.warning(event, extra=fields(**values, suppressed=suppressed))
