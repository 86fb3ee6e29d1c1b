"""A tiny dependency-free progress bar on stderr.

    with Progress(total=len(batches), desc="train") as bar:
        for batch in batches:
            bar.update(1, loss=loss)

On a terminal it redraws one line in place, at most ``TTY_REDRAWS_PER_S`` times
a second: count/total, percent, rate, ETA and the latest ``key=value`` fields.
Elsewhere (CI logs, files) it writes a full line every ``LOG_LINE_INTERVAL_S``
seconds and one when it closes, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

TTY_REDRAWS_PER_S = 5.0  # smooth enough to read, cheap enough for tight loops
LOG_LINE_INTERVAL_S = 10.0  # one line per 10 s keeps CI logs readable
BAR_WIDTH = 24  # characters of the bar itself
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600


def format_duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03`` (hours only when needed)."""
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, SECONDS_PER_MINUTE)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Count/total, rate, ETA and extra fields of a long job, throttled, on stderr."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.count = 0
        self.fields: dict[str, object] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = 1.0 / TTY_REDRAWS_PER_S if self._tty else LOG_LINE_INTERVAL_S
        self._start = clock()
        self._last_draw = self._start
        self._width = 0
        self._drawn_count = -1
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, n: int = 1, **fields: object) -> None:
        """Add ``n`` to the count and remember ``fields``; redraw if it is time."""
        self.count += n
        self.fields.update(fields)
        now = self._clock()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state once and end the line."""
        if self._closed:
            return
        self._closed = True
        if self._tty or self._drawn_count != self.count:
            self._draw(self._clock())
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def line(self, now: float | None = None) -> str:
        """The status line as it would be drawn now."""
        elapsed = (self._clock() if now is None else now) - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        parts = [self.desc]
        if self.total:
            done = min(self.count / self.total, 1.0)
            filled = int(done * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.count}/{self.total} {done:4.0%}")
        else:
            parts.append(str(self.count))
        parts.append(f"{rate:.1f}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and 0 < rate and self.count < self.total:
            parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
        parts += [f"{key}={_format_value(value)}" for key, value in self.fields.items()]
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self._drawn_count = self.count
        if self._tty:
            padding = " " * max(self._width - len(text), 0)
            self._width = len(text)
            self._stream.write(f"\r{text}{padding}")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
