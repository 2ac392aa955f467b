"""One logging setup for every entry point: rich console output plus an optional log file."""

from __future__ import annotations

import logging
import os
import sys

from rich.logging import RichHandler

_CONFIGURED = False


def setup_logging(level: str | int | None = None) -> logging.Logger:
    """Configure the ``hlrp`` logger once. ``HLRP_LOG_LEVEL`` overrides the level."""
    global _CONFIGURED
    level = level or os.environ.get("HLRP_LOG_LEVEL", "INFO")
    logger = logging.getLogger("hlrp")
    if not _CONFIGURED:
        if sys.stderr.isatty():
            handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
            handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
        else:  # Snakemake logs and Slurm output files: plain, greppable lines
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
            )
        logger.addHandler(handler)
        logger.propagate = False
        _CONFIGURED = True
    logger.setLevel(level)
    return logger


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"hlrp.{name}" if not name.startswith("hlrp") else name)
