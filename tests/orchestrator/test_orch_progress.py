"""Progress: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import io
import logging

from stokesflow.orchestrator.progress import Progress, choose_mode, format_duration


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_terminal():
    assert choose_mode("auto", _Tty()) == "bar"
    assert choose_mode("auto", io.StringIO()) == "log"
    assert choose_mode("none", _Tty()) == "none"


def test_bar_shows_pixels_rate_and_eta():
    stream = _Tty()
    with Progress(1000, initial=200, mode="auto", stream=stream) as p:
        p.update(300)
        assert p.mode == "bar"
    text = stream.getvalue()
    assert "500/1.00k" in text or "500/1000" in text
    assert "px/s" in text and "<" in text  # tqdm's elapsed<remaining (ETA)


def test_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="stokesflow.progress")
    p = Progress(100, n_chunks=4, mode="log", interval_s=1e-9, stream=io.StringIO())
    p.update(25)
    p.update(25, failed=True)
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("progress: 25/100 pixels (25.0%), chunks 1/4,")
    assert "px/s" in lines[0] and "ETA" in lines[0]
    assert "1 chunk(s) failed" in lines[-1]
    assert p.rate > 0 and p.eta_s > 0


def test_format_duration():
    assert format_duration(3725.0) == "1:02:05"
    assert format_duration(65) == "1:05"
    assert format_duration(float("inf")) == "?"


def test_waiting_logs_the_workers_at_the_interval(caplog):
    """A driver waiting on queued jobs logs its progress line with the executor's summary."""
    import logging

    p = Progress(100, n_chunks=4, mode="log", interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="stokesflow"):
        p.waiting("jobs: 2 pending, 0 running; workers: 0")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith("progress: 0/100 pixels") and msg.endswith("jobs: 2 pending, 0 running; workers: 0")
    quiet = Progress(100, mode="log", interval_s=3600.0)
    caplog.clear()
    quiet.waiting("workers: 1")  # within the interval: nothing
    assert not caplog.records
