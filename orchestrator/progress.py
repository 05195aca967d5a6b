"""Progress report: a tqdm bar on a terminal, plain log lines otherwise.

Both show pixels done, pixels per second and the estimated time left. The
rate counts only pixels inverted by this run (a resumed run starts its
clock at the pixels already on disk).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "choose_mode", "format_duration"]

log = logging.getLogger("stokesflow.progress")


def choose_mode(mode: str, stream: TextIO | None = None) -> str:
    """``"auto"`` becomes ``"bar"`` if ``stream`` (default stderr) is a terminal, else ``"log"``."""
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):
        return "log"


def format_duration(seconds: float) -> str:
    """``3725.0`` -> ``"1:02:05"``; ``"?"`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Pixel progress of one run.

    Parameters
    ----------
    total : int
        Pixels in the field of view.
    initial : int
        Pixels already done (resume).
    n_chunks, chunks_done : int
        Chunks in the plan and already done (for the log lines).
    mode : str
        ``"auto"``, ``"bar"``, ``"log"`` or ``"none"`` (see :func:`choose_mode`).
    interval_s : float
        Seconds between log lines, in s.
    stream : file, optional
        Where the bar goes (default stderr).
    desc : str
        What is counted: the bar's label, and the log lines' (``"<desc> progress: ..."``;
        plain ``"progress: ..."`` for the default, an inversion).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        n_chunks: int = 0,
        chunks_done: int = 0,
        mode: str = "auto",
        interval_s: float = 10.0,
        stream: TextIO | None = None,
        desc: str = "inverting",
    ) -> None:
        self.total = int(total)
        self.desc = str(desc)
        self.done = int(initial)
        self._initial = int(initial)
        self.n_chunks = int(n_chunks)
        self.chunks_done = int(chunks_done)
        self.failed = 0
        self.mode = choose_mode(mode, stream)
        self.interval_s = float(interval_s)
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.done, unit="px", unit_scale=True,
                desc=self.desc, file=stream if stream is not None else sys.stderr,
                dynamic_ncols=True, smoothing=0.1,
            )

    @property
    def rate(self) -> float:
        """Pixels per second inverted by this run, in px/s."""
        dt = time.perf_counter() - self._t0
        return (self.done - self._initial) / dt if dt > 0 else 0.0

    @property
    def eta_s(self) -> float:
        """Seconds left at the current rate, in s (inf when unknown)."""
        r = self.rate
        return (self.total - self.done) / r if r > 0 else float("inf")

    def line(self) -> str:
        """The text of one log line."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        label = "progress" if self.desc == "inverting" else f"{self.desc} progress"
        text = (
            f"{label}: {self.done}/{self.total} pixels ({pct:.1f}%), "
            f"chunks {self.chunks_done}/{self.n_chunks}, {self.rate:.0f} px/s, "
            f"ETA {format_duration(self.eta_s)}"
        )
        if self.failed:
            text += f", {self.failed} chunk(s) failed"
        return text

    def update(self, pixels: int, *, failed: bool = False) -> None:
        """Count one finished (or failed) chunk of ``pixels`` pixels."""
        if failed:
            self.failed += 1
        else:
            self.done += int(pixels)
            self.chunks_done += 1
            if self._bar is not None:
                self._bar.update(int(pixels))
        if self.mode == "log":
            now = time.perf_counter()
            if now - self._last >= self.interval_s:
                self._last = now
                log.info(self.line())

    def waiting(self, workers: str) -> None:
        """While no chunk finishes: at most every ``interval_s``, the progress line and what the workers do.

        Parameters
        ----------
        workers : str
            The executor's one-line state, e.g. ``"jobs: 2 pending, 1 running; workers: 1"``
            (``Executor.worker_summary``): a driver waiting on queued batch jobs says so.
        """
        now = time.perf_counter()
        if now - self._last < self.interval_s:
            return
        self._last = now
        if self._bar is not None:
            self._bar.set_postfix_str(workers, refresh=True)
        elif self.mode == "log":
            log.info("%s; %s", self.line(), workers)

    def close(self) -> None:
        """Close the bar or write the last log line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            log.info(self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
