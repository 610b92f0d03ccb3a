"""The dataflow's entry point: `python -m bytewax.run flows.ohlc:flow`.

`flow` is the stockpipe dataflow (`flows.stream.dataflow.build_flow`) for the
settings in the environment and `.env`; `stockpipe stream` runs the same flow
with recovery and several workers. A bad setting stops it with one message.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from flows.settings import SettingsError, load_settings
from flows.stream.dataflow import build_flow


def _flow_from_environment() -> Dataflow:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"stockpipe: {exc}") from None
    return build_flow(settings, exit_when_idle=settings.exit_when_idle)


flow = _flow_from_environment()
