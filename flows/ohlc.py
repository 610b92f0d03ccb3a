"""The dataflow's entry point: `python -m bytewax.run flows.ohlc:flow`.

`flow` is the stockpipe dataflow (`flows.stream.dataflow.build_flow`) for the
settings in the environment and `.env`; `stockpipe stream` runs the same flow
with recovery and several workers, and checks the recovery store's rules before
it starts (this entry point relies on the check each partition's bar state makes
on restore). A bad setting stops it with one message.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from flows.errors import StockpipeError
from flows.settings import load_settings
from flows.stream.dataflow import build_flow


def _flow_from_environment() -> Dataflow:
    try:
        settings = load_settings()
        return build_flow(settings, exit_when_idle=settings.exit_when_idle)
    except StockpipeError as exc:  # a bad setting, Kafka or the topic missing
        raise SystemExit(f"stockpipe: {exc}") from None


flow = _flow_from_environment()
