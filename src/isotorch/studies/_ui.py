"""The runner's terminal side: Ctrl-C handling (a first press checkpoints and stops, a second stops at once) and the
progress bar (rich, on stderr).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

__all__ = ["progress_bar", "sigint"]


logger = logging.getLogger(__name__)


@contextlib.contextmanager
def sigint(event: threading.Event, *, message: str | None = "saving a checkpoint at the next update"):
    """First Ctrl-C sets ``event`` (the training loop checkpoints and stops); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        if message:
            logger.warning("Ctrl-C: %s (press again to stop at once)", message)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def progress_bar(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield bar
