"""The error policy of every command (`python -m core.train`, `core.val`, `evolve`, `prune.pipeline`, ...).

- An input error (a bad file, key, value or path: our ValueError subclasses, missing files, yaml
  errors) prints one `PROG: error: ...` line naming the culprit and exits 2, as argparse does.
- Ctrl-C / SIGTERM prints what was kept and exits 130.
- Anything else is a bug or an environment failure: a short line with the exception, a hint to
  rerun with `--debug` (or YEP_DEBUG=1) for the traceback, exit 1.

`--debug` is taken out of argv here, so no parser has to know it.

Logging: library modules log (`LOGGER = logging.getLogger(__name__)`) and never print; the command
prints its final summary. `setup_logging` is the one place that configures logging, and main_guard
calls it before every command's main (INFO unless the command asks for another level), so no command
configures logging itself.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Callable, Sequence

import yaml

__all__ = ["DEBUG_ENV", "main_guard", "setup_logging"]

DEBUG_ENV = "YEP_DEBUG"
# Expected errors: what a user can fix by changing an input. Our error types all derive from ValueError.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                yaml.YAMLError)
EXIT_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def setup_logging(level: int = logging.INFO) -> None:
    """A command's logging, configured once per process: every record at `level` or above, its message
    alone ("%(message)s", so a logged line reads as a printed one did), on stderr.

    A root logger that already has handlers (a second command run in the same process, an application
    or pytest that configured its own) is left as it is.
    """
    logging.basicConfig(level=level, format="%(message)s")


def main_guard(prog: str, interrupted: str = "interrupted", log_level: int = logging.INFO) -> Callable:
    """Decorate a `main(argv) -> int` with the policy above; `interrupted` says what a Ctrl-C keeps,
    `log_level` which records the command shows (setup_logging)."""
    def wrap(main: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def guarded(argv: Sequence[str] | None = None) -> int:
            setup_logging(log_level)
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = debug_requested(argv)
            try:
                return main([a for a in argv if a != "--debug"])
            except SystemExit as e:  # argparse's usage errors (2) and --help (0), as a return value
                return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_INPUT)
            except KeyboardInterrupt:
                print(f"{prog}: {interrupted}", file=sys.stderr)
                return EXIT_INTERRUPTED
            except Exception as e:  # noqa: BLE001 - the policy's last resort
                if debug:
                    raise  # the full traceback, as Python prints it
                if isinstance(e, INPUT_ERRORS):
                    print(f"{prog}: error: {_message(e)}", file=sys.stderr)
                    return EXIT_INPUT
                print(f"{prog}: unexpected error: {type(e).__name__}: {_message(e)}\n"
                      f"{prog}: this is likely a bug; rerun with --debug (or {DEBUG_ENV}=1) to see the traceback",
                      file=sys.stderr)
                return EXIT_BUG
        return guarded
    return wrap


def _message(e: BaseException) -> str:
    """The exception's text; an OSError with a path shows it as 'path: reason'."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    return "\n".join(lines[:6]) + (" ..." if len(lines) > 6 else "")
