"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback.

Exit codes (contract 4), the same for every command: 0 done, 1 failed (a missing
extra, an unexpected error with its traceback), 2 bad usage, a bad setting or
another error the message explains, 3 a check found a problem, 69 a service is
unavailable (EX_UNAVAILABLE of sysexits.h), 130 interrupted.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECK = 3
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130


class StockpipeError(Exception):
    """Something the user can fix (a bad file, a bad option, a store in the wrong state)."""

    exit_code = EXIT_USAGE


class ServiceUnavailable(StockpipeError):
    """A service stockpipe needs (Kafka, the object store, the warehouse) cannot be reached."""

    exit_code = EXIT_UNAVAILABLE


class CheckFailed(StockpipeError):
    """A check (`stockpipe status --check`, `stockpipe chaos`) found a problem."""

    exit_code = EXIT_CHECK
