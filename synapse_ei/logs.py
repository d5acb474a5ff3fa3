"""Logging for workflow jobs: everything a job says, tracebacks included, goes to its log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging and stderr to ``path`` (a Snakemake rule's log); keep stderr when None."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
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
