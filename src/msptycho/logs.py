"""Logging set-up shared by the workflow's scripts (one log file per rule)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the ``msptycho`` logger to ``log_path`` (and stderr), one timestamped line per record.

    Also redirects file descriptor 2 into the log file so that warnings written by compiled
    libraries (VTK, HDF5) end up in the rule's log.
    """
    logger = logging.getLogger("msptycho")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    if log_path:
        open(log_path, "w").close()  # truncate once; both writers below append
        fh = logging.FileHandler(log_path, mode="a")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
        sys.stderr.flush()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    logger.propagate = False
    return logger
