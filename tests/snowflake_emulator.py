"""fakesnow, able to run dbt-snowflake's incremental models.

For delete+insert, dbt-snowflake first runs `create or replace temporary table
<db>.<schema>.<name>__dbt_tmp as (...)`. fakesnow hands that to DuckDB as written,
and DuckDB refuses a qualified name for a temporary table ("TEMPORARY table names
can *only* use the temp catalog"). Inside `emulated_snowflake()` such a statement
creates an ordinary table of that name instead, which behaves the same for the one
session that uses it (dbt drops it after the merge). Nothing else is changed: every
other statement dbt sends, the delete and insert included, runs as sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import fakesnow
from fakesnow.cursor import FakeSnowflakeCursor

_TEMPORARY_TABLE = re.compile(r"\bcreate\s+or\s+replace\s+temporary\s+table\b", re.IGNORECASE)


@contextmanager
def emulated_snowflake() -> Iterator[None]:
    """`fakesnow.patch()`, with dbt's qualified temporary tables made ordinary tables."""
    with fakesnow.patch():
        original = FakeSnowflakeCursor.execute

        def execute(self, command, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(command, str):
                command = _TEMPORARY_TABLE.sub("create or replace table", command, count=1)
            return original(self, command, *args, **kwargs)

        FakeSnowflakeCursor.execute = execute  # type: ignore[method-assign]
        try:
            yield
        finally:
            FakeSnowflakeCursor.execute = original  # type: ignore[method-assign]
