"""Special files named like checkpoints (a FIFO, a link to one, a device), and a guard for tests that must not
hang on one: a plain open() of a FIFO waits for a writer forever."""

import contextlib
import os
import threading
from pathlib import Path


def fifo_and_link(folder: Path, name: str = "x.safetensors") -> tuple[Path, Path]:
    """A FIFO ``name`` in ``folder`` and a symlink ``link-<name>`` to it."""
    folder.mkdir(parents=True, exist_ok=True)
    fifo, link = folder / name, folder / f"link-{name}"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    return fifo, link


@contextlib.contextmanager
def released_after(seconds: float, *fifos: Path):
    """Yields a list that is non-empty if, after ``seconds``, something was still blocked opening one of
    ``fifos`` for reading: then it is released (a writer opens and closes it), so the test fails instead of
    hanging."""
    released: list[str] = []
    done = threading.Event()

    def guard() -> None:
        if done.wait(seconds):
            return
        while not done.is_set():
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader waits
                    released.append(str(fifo))
                except OSError:
                    pass
            done.wait(0.05)

    thread = threading.Thread(target=guard, daemon=True)
    thread.start()
    try:
        yield released
    finally:
        done.set()
        thread.join()
