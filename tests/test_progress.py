"""The stderr progress bar: throttling, TTY redraws, log lines, fields, ETA."""

from __future__ import annotations

import io

from sketchserve.progress import LOG_LINE_INTERVAL_S, TTY_REDRAWS_PER_S, Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_stream_gets_a_line_per_interval_and_a_final_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    with Progress(100, "train", stream=stream, clock=clock) as bar:
        for step in range(100):
            clock.now += LOG_LINE_INTERVAL_S / 20
            bar.update(1, loss=1 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # at 20, 40, 60, 80 steps and the close at 100
    assert lines[0].startswith("train  [") and "20/100" in lines[0] and "ETA 0:" in lines[0]
    assert "100/100 100%" in lines[-1] and "loss=0.01" in lines[-1] and "ETA" not in lines[-1]


def test_tty_redraws_in_place_at_most_five_times_a_second() -> None:
    clock, stream = FakeClock(), FakeTTY()
    bar = Progress(None, "encode", stream=stream, clock=clock)
    for _ in range(1000):
        clock.now += 0.001  # one second in all
        bar.update(3, batch=7)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") <= TTY_REDRAWS_PER_S + 1 and text.endswith("\n")
    assert "\n" not in text[:-1]
    assert "encode  3000  3000.0/s" in text.split("\r")[-1] and "batch=7" in text


def test_close_is_idempotent() -> None:
    stream = io.StringIO()
    bar = Progress(2, "x", stream=stream, clock=FakeClock())
    bar.update(2)
    bar.close()
    bar.close()
    assert len(stream.getvalue().splitlines()) == 1


def test_format_duration() -> None:
    assert format_duration(5) == "0:05"
    assert format_duration(125.4) == "2:05"
    assert format_duration(3725) == "1:02:05"
