"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback."""


class StockpipeError(Exception):
    """Something the user can fix (a missing service, a bad file, a bad option)."""


class ServiceUnavailable(StockpipeError):
    """A service stockpipe needs (Kafka, the object store, the warehouse) cannot be reached."""
