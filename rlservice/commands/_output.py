"""Other libraries' output to a log file, so that a command's own lines stand alone on the terminal."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def output_to(log: Path, terminal: TextIO | None = None):
    """File descriptors 1 and 2 -> `log` (appended) for the duration, so that child processes
    (Ray's workers) and C libraries follow too; yields a stream to the terminal (a duplicate of
    `terminal`, default stdout)."""
    terminal = terminal or sys.stdout
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        screen = os.fdopen(os.dup(terminal.fileno()), "w")
    except (AttributeError, io.UnsupportedOperation):  # an in-memory stream (a test's capture): keep it
        screen = terminal
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with log.open("a") as out:
        for fd in saved:
            os.dup2(out.fileno(), fd)
        try:
            yield screen
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if screen is not terminal:
                screen.close()
