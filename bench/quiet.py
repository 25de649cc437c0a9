"""A benchmark's own studies run quietly: their progress lines would bury the bench's table."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

__all__ = ["quiet_evolution"]


@contextlib.contextmanager
def quiet_evolution() -> Iterator[None]:
    """Silence a study's stdout/stderr lines and evolve's INFO log records (warnings still show) for the block."""
    log = logging.getLogger("evolve")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)
