"""Logging for workflow jobs: everything a job says, tracebacks included, goes to its log file.

The error that ends a job is also printed, without its traceback, where the job's stderr went
before (Snakemake's console, or Slurm's job log), so a user reads what went wrong and what to
do there instead of only Snakemake's "check log file(s)".
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import TextIO


def _report_on(console: TextIO, log_path: Path) -> None:
    """Install an excepthook that writes the traceback to the log (the redirected stderr) and
    the error's own message to ``console``."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException,
             trace: TracebackType | None) -> None:
        previous(kind, error, trace)  # the full traceback, into the log file
        if issubclass(kind, KeyboardInterrupt):
            return
        try:
            message = "".join(traceback.format_exception_only(kind, error)).rstrip()
            console.write(f"{message}\n(traceback in {log_path})\n")
            console.flush()
        except Exception:  # a closed console must not hide the original error
            pass

    sys.excepthook = hook


def log_to_file(path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging and stderr to ``path`` (a Snakemake rule's log); keep stderr when None.

    With a ``path``, the exception that ends the job is also printed, as its one-line
    ``Type: message``, on the stderr the job started with.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        _report_on(sys.stderr, Path(path))
        # Tracebacks and warnings of libraries go to the same file as our own messages.
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
