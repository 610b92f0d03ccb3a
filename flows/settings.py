"""One typed settings object for every command (contract 4, docs/contracts.md).

Values come from environment variables and an optional `.env` file in the
working directory. `load_settings()` turns a validation failure into a
`SettingsError` whose message names the variable and the offending value, so
the CLI can stop with one clear line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from flows.errors import StockpipeError

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.:_\-]{0,31}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class SettingsError(StockpipeError, ValueError):
    """A setting has a value stockpipe cannot use; the message says which and why."""


def parse_duration(value: Any) -> float:
    """Seconds from `500ms`, `5s`, `10m`, `1h`, `1d` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(
                f"not a duration: {value!r} (write e.g. 500ms, 5s, 10m, 1h or plain seconds)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


_BYTES_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_bytes(value: Any) -> int:
    """Bytes from `65536`, `64KiB`, `256MiB` or `1GiB` (binary units, as the docs write them)."""
    if isinstance(value, bool):
        raise ValueError(f"not a byte size: {value!r}")
    if isinstance(value, int):
        return value
    match = _BYTES_RE.match(str(value))
    if not match:
        raise ValueError(f"not a byte size: {value!r} (write e.g. 65536, 64KiB, 256MiB or 1GiB)")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


# The lake is a folder (a path or file://) or S3 (s3://, also MinIO); fsspec would read
# any other scheme as a folder name, so it is refused here rather than loading nothing.
LAKE_SCHEMES = ("s3", "file")


def parse_lake_url(value: Any) -> str:
    url = str(value).strip()
    scheme, sep, _rest = url.partition("://")
    if sep and scheme not in LAKE_SCHEMES:
        hint = " (schemes are lower case)" if scheme.lower() in LAKE_SCHEMES else ""
        raise ValueError(
            f"not a lake stockpipe can use: {url!r}{hint}; write a folder, "
            "file:///path or s3://bucket/prefix"
        )
    if scheme == "s3" and not _rest.strip("/"):
        raise ValueError(f"an s3:// lake needs a bucket: {url!r} (write s3://bucket/prefix)")
    return url


def parse_symbols(value: Any) -> list[str]:
    """A comma-separated list (or a list) of contract-1 symbols, upper-cased, de-duplicated."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        symbol = str(raw).strip().upper()
        if not symbol:
            continue
        if not SYMBOL_RE.match(symbol):
            raise ValueError(f"not a valid symbol: {raw!r} (expected e.g. COIN or BINANCE:BTCUSDT)")
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise ValueError("needs at least one symbol")
    return out


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
Symbols = Annotated[list[str], NoDecode, BeforeValidator(parse_symbols)]


def _env(*names: str) -> Any:
    return Field(validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    """Every setting of stockpipe; environment variable names as in docs/contracts.md."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # a secret's NAME_FILE counts as its NAME (an explicit argument still wins)
        secret_files = SecretFiles(settings_cls)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings

    # Kafka
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    topic: str = Field("stock.ticks", validation_alias="STOCKPIPE_TOPIC")
    topic_partitions: int = Field(4, ge=1, le=1024, validation_alias="STOCKPIPE_TOPIC_PARTITIONS")
    kafka_data_dir: Path = Field(Path("./data/kafka"), validation_alias="STOCKPIPE_KAFKA_DATA_DIR")
    kafka_cache_dir: Path = Field(
        Path("~/.cache/stockpipe/kafka").expanduser(), validation_alias="STOCKPIPE_KAFKA_CACHE_DIR"
    )
    # Kafka security: librdkafka's settings of the same names, for every client stockpipe
    # makes (producers, the stream's source, markers and DLQ sink, status, bench, chaos).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_ca_location: Path | None = Field(None, validation_alias="KAFKA_SSL_CA_LOCATION")
    kafka_ssl_certificate_location: Path | None = Field(
        None, validation_alias="KAFKA_SSL_CERTIFICATE_LOCATION"
    )
    kafka_ssl_key_location: Path | None = Field(None, validation_alias="KAFKA_SSL_KEY_LOCATION")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, validation_alias="KAFKA_SSL_KEY_PASSWORD"
    )

    # What to track
    symbols: Symbols = Field(["COIN", "MARA", "MSTR", "BLK"], validation_alias="STOCKPIPE_SYMBOLS")

    # Bars (contract 2)
    bar_seconds: int = Field(60, ge=1, le=86400, validation_alias="STOCKPIPE_BAR_SECONDS")
    allowed_lateness: Duration = Field(5.0, validation_alias="STOCKPIPE_ALLOWED_LATENESS")
    restate_horizon: Duration = Field(3600.0, validation_alias="STOCKPIPE_RESTATE_HORIZON")
    # Contract 1: a tick more than this ahead of its Kafka record's timestamp is `future-ts`
    max_clock_skew: Duration = Field(60.0, validation_alias="STOCKPIPE_MAX_CLOCK_SKEW")
    max_message_bytes: ByteSize = Field(
        65_536, ge=256, le=16 * 1024 * 1024, validation_alias="STOCKPIPE_MAX_MESSAGE_BYTES"
    )
    # Contract 2: a quiet partition gets a heartbeat record after this long (moves log time)
    heartbeat_interval: Duration = Field(1.0, validation_alias="STOCKPIPE_HEARTBEAT_INTERVAL")
    # Contract 1: trade conditions decide which trades set a bar's prices and volume
    # (docs/conditions.md); `off` counts every trade as a regular one.
    conditions: Literal["on", "off"] = Field("on", validation_alias="STOCKPIPE_CONDITIONS")
    # A condition code no feed mapping knows: counted in the bar, and counted like a regular
    # trade (`regular`) or in volume only (`volume`).
    unknown_conditions: Literal["regular", "volume"] = Field(
        "regular", validation_alias="STOCKPIPE_UNKNOWN_CONDITIONS"
    )
    # Contract 2: at most one restatement per window per this much log time
    restate_interval: Duration = Field(1.0, validation_alias="STOCKPIPE_RESTATE_INTERVAL")
    recovery_dir: Path = Field(Path("./data/recovery"), validation_alias="STOCKPIPE_RECOVERY_DIR")
    recovery_partitions: int = Field(
        4, ge=1, le=256, validation_alias="STOCKPIPE_RECOVERY_PARTITIONS"
    )
    # A restarted worker re-reads at most this much of its work since the last snapshot:
    # 2 s keeps resume under 5 s in a full-speed backlog; a snapshot reuses the closed
    # windows' packed bytes, so it costs ~5 ms per partition at 500 symbols, ~40 at 5,000.
    epoch_interval: Duration = Field(2.0, validation_alias="STOCKPIPE_EPOCH_INTERVAL")
    # Set by `stockpipe stream --exit-when-idle` for the worker processes it starts.
    exit_when_idle: Duration | None = Field(None, validation_alias="STOCKPIPE_EXIT_WHEN_IDLE")

    # Lake
    lake_url: Annotated[str, BeforeValidator(parse_lake_url)] = Field(
        "./data/lake", validation_alias="STOCKPIPE_LAKE_URL"
    )
    s3_endpoint_url: str | None = Field(None, validation_alias="S3_ENDPOINT_URL")
    aws_access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    flush_rows: int = Field(50_000, ge=1, validation_alias="STOCKPIPE_FLUSH_ROWS")
    # Rows come in bursts (a window closes for every symbol at about the same log time):
    # 1 s seals each burst about a second after it starts, so bars reach the lake about
    # a second after their window closes, in one or two files per partition a minute.
    flush_interval: Duration = Field(1.0, validation_alias="STOCKPIPE_FLUSH_INTERVAL")

    # Warehouse
    warehouse: str = Field(
        "duckdb:///./data/warehouse.duckdb", validation_alias="STOCKPIPE_WAREHOUSE"
    )
    snowflake_account: str | None = Field(None, validation_alias="SNOWFLAKE_ACCOUNT")
    snowflake_user: str | None = Field(None, validation_alias="SNOWFLAKE_USER")
    snowflake_password: SecretStr | None = Field(None, validation_alias="SNOWFLAKE_PASSWORD")
    snowflake_private_key_path: Path | None = Field(
        None, validation_alias="SNOWFLAKE_PRIVATE_KEY_PATH"
    )
    snowflake_private_key_passphrase: SecretStr | None = Field(
        None, validation_alias="SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
    )
    snowflake_role: str | None = Field(None, validation_alias="SNOWFLAKE_ROLE")
    snowflake_warehouse: str | None = Field(None, validation_alias="SNOWFLAKE_WAREHOUSE")
    snowflake_database: str = Field("STOCKPIPE", validation_alias="SNOWFLAKE_DATABASE")
    snowflake_stage: str = Field("BRONZE.LAKE_STAGE", validation_alias="SNOWFLAKE_STAGE")
    snowflake_host: str | None = Field(None, validation_alias="SNOWFLAKE_HOST")
    snowflake_port: int | None = Field(None, validation_alias="SNOWFLAKE_PORT")
    snowflake_protocol: str | None = Field(None, validation_alias="SNOWFLAKE_PROTOCOL")
    load_batch_files: int = Field(200, ge=1, validation_alias="STOCKPIPE_LOAD_BATCH_FILES")
    snowflake_login_timeout: Duration = Field(60.0, validation_alias="SNOWFLAKE_LOGIN_TIMEOUT")
    # A load run commits at most this many batches; the rest waits for the next run.
    load_max_batches: int = Field(50, ge=1, validation_alias="STOCKPIPE_LOAD_MAX_BATCHES")
    # Days before the newest loaded `date=` partition (on top of the restate horizon)
    # that the loader lists again for late files; older partitions are never listed.
    load_lookback_days: int = Field(
        1, ge=0, le=366, validation_alias="STOCKPIPE_LOAD_LOOKBACK_DAYS"
    )
    # Roles of infra/snowflake/setup.sql: the loader (PUT + COPY) and dbt (silver, gold).
    # Unset, both fall back to SNOWFLAKE_ROLE (or the user's default role).
    snowflake_loader_role: str | None = Field(None, validation_alias="SNOWFLAKE_LOADER_ROLE")
    snowflake_transform_role: str | None = Field(None, validation_alias="SNOWFLAKE_TRANSFORM_ROLE")
    # Session settings of the loader: how long a load waits for another load's lock,
    # and the longest any one statement (a COPY) may run.
    snowflake_lock_timeout: Duration = Field(300.0, validation_alias="SNOWFLAKE_LOCK_TIMEOUT")
    snowflake_statement_timeout: Duration = Field(
        3600.0, validation_alias="SNOWFLAKE_STATEMENT_TIMEOUT"
    )

    # Sources
    finnhub_api_key: SecretStr | None = Field(None, validation_alias="FINNHUB_API_KEY")
    finnhub_ws_url: str = Field("wss://ws.finnhub.io", validation_alias="FINNHUB_WS_URL")
    # Public crypto trade websockets (no key): Coinbase Advanced Trade market data, Binance spot
    coinbase_ws_url: str = Field(
        "wss://advanced-trade-ws.coinbase.com", validation_alias="COINBASE_WS_URL"
    )
    binance_ws_url: str = Field("wss://stream.binance.com:9443", validation_alias="BINANCE_WS_URL")
    finnhub_rest_url: str = Field("https://finnhub.io/api/v1", validation_alias="FINNHUB_REST_URL")
    finnhub_stall_timeout: Duration = Field(
        30.0, validation_alias="STOCKPIPE_FINNHUB_STALL_TIMEOUT"
    )
    finnhub_calls_per_minute: int = Field(
        60, ge=1, validation_alias="STOCKPIPE_FINNHUB_CALLS_PER_MINUTE"
    )
    outage_log: Path = Field(Path("./data/outages.jsonl"), validation_alias="STOCKPIPE_OUTAGE_LOG")
    # Producers: while Kafka is unreachable, records wait in a disk spool of at most this size;
    # on stop, undelivered records get this long to drain before they go to the outage log
    spool_dir: Path = Field(Path("./data/spool"), validation_alias="STOCKPIPE_SPOOL_DIR")
    spool_max_bytes: ByteSize = Field(
        256 * 1024 * 1024, ge=0, validation_alias="STOCKPIPE_SPOOL_MAX_BYTES"
    )
    producer_drain_timeout: Duration = Field(
        30.0, validation_alias="STOCKPIPE_PRODUCER_DRAIN_TIMEOUT"
    )

    # Orchestration and reporting
    load_interval: Duration = Field(300.0, validation_alias="STOCKPIPE_LOAD_INTERVAL")
    alert_webhook: SecretStr | None = Field(None, validation_alias="STOCKPIPE_ALERT_WEBHOOK")
    # Metrics (flows/metrics.py): the producer serves /metrics and /healthz on this port,
    # stream worker process i on port + 1 + i; 0 turns the endpoint off.
    metrics_port: int = Field(9464, ge=0, le=65000, validation_alias="STOCKPIPE_METRICS_PORT")
    metrics_textfile: Path | None = Field(None, validation_alias="STOCKPIPE_METRICS_TEXTFILE")
    # The load and the transform write load.prom and transform.prom here after each run
    # (node_exporter's textfile collector reads them); None turns that off.
    metrics_dir: Path | None = Field(None, validation_alias="STOCKPIPE_METRICS_DIR")
    # Airflow task retries; the delay doubles per try (exponential backoff), up to 10 minutes
    task_retries: int = Field(3, ge=0, le=20, validation_alias="STOCKPIPE_TASK_RETRIES")
    retry_delay: Duration = Field(30.0, validation_alias="STOCKPIPE_RETRY_DELAY")
    dbt_target: str = Field("duckdb", validation_alias="STOCKPIPE_DBT_TARGET")
    # dbt artifacts (manifest, catalog, docs); None means the repo's dbt/target
    dbt_target_path: Path | None = Field(None, validation_alias="STOCKPIPE_DBT_TARGET_PATH")
    report_path: Path = Field(
        Path("./reports/stockpipe.html"), validation_alias="STOCKPIPE_REPORT_PATH"
    )
    # `stockpipe status --check` (flows/ops/status.py): how far behind each part may be
    check_max_lag: int = Field(10_000, ge=0, validation_alias="STOCKPIPE_CHECK_MAX_LAG")
    check_max_log_time_lag: Duration = Field(
        300.0, validation_alias="STOCKPIPE_CHECK_MAX_LOG_TIME_LAG"
    )
    check_max_lake_delay: Duration = Field(600.0, validation_alias="STOCKPIPE_CHECK_MAX_LAKE_DELAY")
    check_max_load_delay: Duration = Field(900.0, validation_alias="STOCKPIPE_CHECK_MAX_LOAD_DELAY")
    check_max_mart_delay: Duration = Field(900.0, validation_alias="STOCKPIPE_CHECK_MAX_MART_DELAY")

    @field_validator("heartbeat_interval")
    @classmethod
    def _heartbeat(cls, value: float) -> float:
        if value < 0.05:
            raise ValueError(
                f"must be at least 50ms (a heartbeat per poll would flood the log), got {value}s"
            )
        return value

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._\-]{1,200}", value):
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_certificate_location is None) != (self.kafka_ssl_key_location is None):
            raise ValueError(
                "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together "
                "(a client certificate and its key)"
            )
        return self

    @field_validator("kafka_ssl_ca_location", "kafka_ssl_certificate_location",
                     "kafka_ssl_key_location")  # fmt: skip
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings of every client: the brokers, and security when it is on.

        Secrets are in it (SASL password, key password): never log or print it.
        """
        conf = {"bootstrap.servers": self.kafka_bootstrap_servers}
        conf.update(self.kafka_security_config())
        return conf

    def kafka_security_config(self) -> dict[str, str]:
        """The security part of `kafka_config` alone (empty for PLAINTEXT)."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        conf = {"security.protocol": protocol}
        if protocol.startswith("SASL_"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            if self.kafka_sasl_password is not None:
                conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if protocol.endswith("SSL"):
            if self.kafka_ssl_ca_location is not None:
                conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
            if self.kafka_ssl_certificate_location is not None:
                conf["ssl.certificate.location"] = str(self.kafka_ssl_certificate_location)
                conf["ssl.key.location"] = str(self.kafka_ssl_key_location)
            if self.kafka_ssl_key_password is not None:
                conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return conf

    @field_validator("warehouse")
    @classmethod
    def _warehouse(cls, value: str) -> str:
        if value != "snowflake" and not value.startswith("duckdb://"):
            raise ValueError(f"expected duckdb:///path/to/file.duckdb or snowflake, got {value!r}")
        return value

    @field_validator("dbt_target")
    @classmethod
    def _dbt_target(cls, value: str) -> str:
        if value not in ("duckdb", "snowflake"):
            raise ValueError(f"expected duckdb or snowflake, got {value!r}")
        return value

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for the worker processes we start."""
        env: dict[str, str] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                alias = alias.choices[0]
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            env[str(alias)] = str(value)
        return env

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def duckdb_path(self) -> Path:
        """The DuckDB file behind `duckdb:///path` (relative paths are relative to the cwd)."""
        if self.warehouse == "snowflake":
            raise SettingsError("STOCKPIPE_WAREHOUSE is 'snowflake': there is no DuckDB file")
        return Path(self.warehouse.removeprefix("duckdb:///").removeprefix("duckdb://"))

    @cached_property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for the lake URL (s3fs for s3://, nothing for local folders)."""
        if not self.lake_url.startswith("s3://"):
            return {}
        opts: dict[str, Any] = {}
        if self.s3_endpoint_url:
            opts["endpoint_url"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            opts["key"] = self.aws_access_key_id.get_secret_value()
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        return opts


def _alias(name: str, info: FieldInfo) -> str:
    """The environment variable of a setting (the first of its aliases)."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    return str(alias or name.upper())


def _is_secret(info: FieldInfo | None) -> bool:
    return info is not None and "SecretStr" in str(info.annotation)


class SecretFiles(PydanticBaseSettingsSource):
    """`NAME_FILE` for every secret setting `NAME`: the value is that file's content.

    Docker and Kubernetes mount secrets as files (compose `secrets:` under
    /run/secrets), so a password need never sit in the environment. One trailing
    newline is dropped. Setting both `NAME` and `NAME_FILE` is an error, as is a
    file that cannot be read; both name the variable.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        from dotenv import dotenv_values

        env_file = self.config.get("env_file")
        found = dotenv_values(env_file) if isinstance(env_file, str | Path) else {}
        env = {**{k: v for k, v in found.items() if v is not None}, **os.environ}
        values: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            if not _is_secret(info):
                continue
            alias = _alias(name, info)
            path = env.get(f"{alias}_FILE")
            if not path:
                continue
            if env.get(alias):
                raise SettingsError(f"set {alias} or {alias}_FILE, not both")
            try:
                text = Path(path).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise SettingsError(f"{alias}_FILE={path!r}: cannot read it ({reason})") from None
            values[name] = text.removesuffix("\n").removesuffix("\r")
        return values


def _describe(error: dict[str, Any]) -> str:
    if not error.get("loc"):  # a rule over several settings: its message names them (the
        # input is every setting, secrets included, so it is never shown)
        return str(error.get("msg", "invalid")).removeprefix("Value error, ")
    field_name = str(error["loc"][0])
    info = Settings.model_fields.get(field_name)
    name = _alias(field_name, info) if info else field_name.upper()
    value = error.get("input")
    shown = "***" if _is_secret(info) else repr(value)
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{name}={shown}: {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; raise `SettingsError` naming each bad variable and value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise SettingsError("bad setting: " + "; ".join(lines)) from None
