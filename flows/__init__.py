"""stockpipe: real-time stock ticks to OHLCV bars, a Parquet lake, a warehouse and dbt marts."""

__version__ = "0.1.0"
