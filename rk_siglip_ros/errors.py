"""The project's error vocabulary: exit codes, one-line messages, and the base classes of expected errors.

Two kinds of error are expected and shown to a person as one line, never as a traceback:

- :class:`UserError`: the request cannot be carried out as given, and it is the user's to fix (a bad manifest, bag,
  image, parameter, text or timing profile; a backend this machine lacks). Exit status 2.
- :class:`RunFailedError`: the work started and failed in a way the message explains (an embedding that is not finite,
  a build whose verification missed its bound, an NPU call that never returned). Exit status 1.

Anything else is a bug: the command-line tools print its traceback and ask for a report. A leaf module: it imports
nothing from the package, so every stage can raise these.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATUS_HELP = ("exit status: 0 done; 1 failed while running (encoder or I/O failure mid-run, or an internal "
                    "error: traceback printed); 2 bad arguments, input or setup (bag, images, shard set, backend); "
                    "130 interrupted (Ctrl-C, SIGTERM)")
# File-system errors carry the path and the reason; like a UserError they are the user's to fix.
FILE_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class ExplainedError(Exception):
    """An expected error whose message says what happened and what to do: shown as one line."""

    exit_status = EXIT_FAILED


class UserError(ExplainedError):
    """A request that cannot be carried out as given; the user's to fix (exit status 2)."""

    exit_status = EXIT_USAGE


class RunFailedError(ExplainedError):
    """Work that started and failed in a way its message explains (exit status 1)."""

    exit_status = EXIT_FAILED


def one_line(error: BaseException) -> str:
    """An error as one line for a person: whitespace collapsed, no trailing period, the type name if it is empty."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rstrip(".")


def exit_status_of(error: BaseException) -> int:
    """The documented exit status for an expected error (ExplainedError or a file error)."""
    return error.exit_status if isinstance(error, ExplainedError) else EXIT_USAGE
