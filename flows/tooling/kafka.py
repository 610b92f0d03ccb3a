"""The local Apache Kafka broker behind `stockpipe kafka start|stop|status|fetch`.

A real single-node Apache Kafka 4.x in KRaft mode (one process that is both
broker and controller), run straight from Apache Kafka's own jars. The jars are
fetched once with Maven (`infra/kafka/pom.xml`) into `STOCKPIPE_KAFKA_CACHE_DIR`
and shared by every checkout; the broker's data, generated `server.properties`,
pid file and logs live under `STOCKPIPE_KAFKA_DATA_DIR`.

Layout of the data dir:

    server.properties   regenerated from the settings on every start
    controller.port     the KRaft controller port, fixed when the storage is formatted
    broker.pid          pid of the running broker (absent or stale when none runs)
    data/               Kafka's log dirs (topics, the metadata log, meta.properties)
    logs/server.log     the broker's log (log4j2, infra/kafka/log4j2.properties)
    logs/console.log    the JVM's stdout/stderr (errors before logging is up)

Anyone with a broker of their own skips all this: point KAFKA_BOOTSTRAP_SERVERS
at it and never run `stockpipe kafka start`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import typer
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from rich.console import Console
from rich.table import Table

from flows.assets import asset_dir
from flows.errors import ServiceUnavailable, StockpipeError
from flows.net import free_ports, port_free
from flows.settings import Settings, load_settings, parse_duration
from flows.tooling import kafka_security as security

INFRA_DIR = asset_dir("infra/kafka")
POM = INFRA_DIR / "pom.xml"
LOG4J_CONFIG = INFRA_DIR / "log4j2.properties"

MIN_JAVA = 17
JVM_OPTS = ["-Xmx768m", "-Xms256m", "-Djava.awt.headless=true"]
STOP_GRACE_SECONDS = 30.0

_NO_JAVA_HINT = (
    "To use a Kafka broker you already run instead, set KAFKA_BOOTSTRAP_SERVERS=host:port "
    "to its address and skip `stockpipe kafka start`."
)


# ---------------------------------------------------------------- tools


def kafka_version(pom: Path = POM) -> str:
    """The Apache Kafka version the pom pins (`<kafka.version>`): names the jar cache folder."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise StockpipeError(f"cannot read the Kafka pom {pom}: {exc}") from None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "kafka.version" and element.text:
            return element.text.strip()
    raise StockpipeError(f"{pom} has no <kafka.version> property")


def _java_home_binary() -> str | None:
    # JAVA_HOME wins over PATH, as in Kafka's own kafka-run-class.sh.
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_java() -> str:
    """The `java` executable (JAVA_HOME, then PATH), checked to be Java 17 or newer."""
    java = _java_home_binary() or shutil.which("java")
    if java is None:
        raise StockpipeError(
            f"Java {MIN_JAVA}+ is needed to run the local Apache Kafka broker, and no `java` "
            f"was found (JAVA_HOME unset, nothing on PATH). Install a JDK/JRE {MIN_JAVA}+ "
            f"(e.g. `apt-get install openjdk-17-jre-headless`). {_NO_JAVA_HINT}"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StockpipeError(f"cannot run {java} -version: {exc}. {_NO_JAVA_HINT}") from None
    # `java -version` writes to stderr: openjdk version "17.0.15" / java version "1.8.0_402"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise StockpipeError(f"cannot tell the version of {java}. {_NO_JAVA_HINT}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StockpipeError(
            f"Apache Kafka 4 needs Java {MIN_JAVA}+, but {java} is Java {major}. "
            f"Install a newer JDK and put it first on PATH or in JAVA_HOME. {_NO_JAVA_HINT}"
        )
    return java


def find_maven() -> str:
    """The `mvn` executable, needed only to fetch the jars the first time."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StockpipeError(
            "Maven (`mvn`) is needed once to fetch Apache Kafka's jars for the local broker "
            "and was not found on PATH. Install it (e.g. `apt-get install maven`) and run "
            f"`stockpipe kafka fetch`. {_NO_JAVA_HINT}"
        )
    return mvn


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`: two test sessions may start or fetch at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- jars


def libs_dir(settings: Settings) -> Path:
    """Where the jars of the pinned Kafka version live: `<cache>/<version>/libs`."""
    return settings.kafka_cache_dir.expanduser().resolve() / kafka_version() / "libs"


def _complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def fetch(settings: Settings) -> Path:
    """Fetch Apache Kafka's jars with Maven into the cache, once; returns the libs dir.

    Idempotent and atomic: Maven copies into a temporary folder beside the
    target which is renamed into place, so a crash or a concurrent fetch never
    leaves a half-filled libs dir that would look complete.
    """
    version = kafka_version()
    libs = libs_dir(settings)
    if _complete(libs, version):
        return libs
    mvn = find_maven()
    with _locked(libs.parent / ".fetch.lock"):
        if not _complete(libs, version):  # else a concurrent fetch finished while we waited
            _maven_copy(mvn, version, libs)
    return libs


def _maven_copy(mvn: str, version: str, libs: Path) -> None:
    """Copy the pom's runtime classpath into a temporary folder, then rename it to `libs`."""
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    try:
        cmd = [
            mvn, "-q", "-B", "-f", str(POM),
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired:
            raise StockpipeError("Maven did not finish fetching the Kafka jars in 30 min") from None
        if out.returncode != 0 or not _complete(tmp, version):
            tail = _tail_text(out.stdout + out.stderr, 30)
            raise StockpipeError(
                f"Maven could not fetch Apache Kafka {version} (exit {out.returncode}) with "
                f"{' '.join(cmd)}:\n{tail}\n{_NO_JAVA_HINT}"
            )
        if libs.exists():  # an incomplete folder someone filled by hand: replace it
            shutil.rmtree(libs)
        tmp.rename(libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- addresses and files


def _first_server(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _admin(bootstrap: str, timeout: float, config: dict[str, str] | None = None) -> AdminClient:
    # log_level 0: while probing, "connection refused" is an answer, not something to print.
    return AdminClient(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": max(int(timeout * 1000), 100),
            "log_level": 0,
        }
    )


def broker_reachable(
    bootstrap: str, timeout: float = 2.0, config: dict[str, str] | None = None
) -> bool:
    """Whether a Kafka broker answers metadata requests at `bootstrap` within `timeout` s.

    `config`: the client's security settings (`Settings.kafka_config`), for a secured one.
    """
    host, port = _first_server(bootstrap)
    # A plain TCP probe first: instant when nothing listens, and librdkafka stays silent.
    if not _port_open(host, port, timeout=min(timeout, 1.0)):
        return False
    try:
        _admin(bootstrap, timeout, config).list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False


def _data_dir(settings: Settings) -> Path:
    return settings.kafka_data_dir.expanduser().resolve()


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 64_000, 0))
            return _tail_text(fh.read().decode("utf-8", "replace"), lines)
    except OSError:
        return ""


def _logs_tail(data_dir: Path) -> str:
    parts = []
    for name in ("server.log", "console.log"):
        tail = _tail_file(data_dir / "logs" / name)
        if tail:
            parts.append(f"--- {data_dir / 'logs' / name} (last lines) ---\n{tail}")
    return "\n".join(parts) or f"(no log under {data_dir / 'logs'})"


def _running_pid(data_dir: Path) -> int | None:
    """Pid of the broker started from this data dir, if it still runs; clears a stale pid file."""
    pid_file = data_dir / "broker.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        # The pid may have been reused by an unrelated process since: check it is our broker.
        alive = proc.status() != psutil.STATUS_ZOMBIE and str(data_dir / "server.properties") in (
            proc.cmdline()
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        alive = False
    if not alive:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _controller_port(data_dir: Path, host: str, broker_port: int) -> int:
    """The KRaft controller port: recorded at format time, since the metadata log names it."""
    return _recorded_port(data_dir / "controller.port", host, broker_port + 1)


def _internal_port(data_dir: Path, broker_port: int) -> int:
    """The loopback PLAINTEXT listener of a secured broker (`flows.tooling.kafka_security`)."""
    return _recorded_port(data_dir / "internal.port", "127.0.0.1", broker_port + 2)


def _recorded_port(record: Path, host: str, port: int) -> int:
    if record.exists():
        return int(record.read_text().strip())
    if port > 65535 or not port_free(host, port):
        port = free_ports(1, host)
    record.write_text(f"{port}\n")
    return port


def _server_properties(
    settings: Settings,
    data_dir: Path,
    controller_port: int,
    secure: dict[str, str] | None = None,
) -> str:
    """server.properties; `secure` replaces the listeners of a secured broker."""
    host, port = _first_server(settings.kafka_bootstrap_servers)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # With `format --standalone` the voter set comes from the bootstrap servers, not voters.
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "data"),
        "num.partitions": str(settings.topic_partitions),
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        # 50 partitions (the default) make the first consumer group on a fresh broker slow.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # One member per group locally: waiting for more members only delays every consumer.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
        **(secure or {}),
    }
    lines = ["# Generated by stockpipe (flows/tooling/kafka.py) on every start; edits are lost."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _java_cmd(java: str, libs: Path, data_dir: Path, *args: str) -> list[str]:
    # Java expands the `dir/*` classpath wildcard itself, so no shell is needed.
    return [
        java,
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={data_dir / 'logs'}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def _run_tool(java: str, libs: Path, data_dir: Path, *args: str) -> str:
    """Run one of Kafka's command-line tools to completion; its stdout, or a clear error."""
    out = subprocess.run(
        _java_cmd(java, libs, data_dir, *args),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise StockpipeError(
            f"{' '.join(args)} failed (exit {out.returncode}) for the Kafka data dir {data_dir}:\n"
            f"{_tail_text(out.stdout + out.stderr, 30)}"
        )
    return out.stdout


def _format_storage(java: str, libs: Path, data_dir: Path) -> None:
    """Format the KRaft storage once: a new cluster id, this node as the only voter."""
    cluster_id = _run_tool(java, libs, data_dir, "kafka.tools.StorageTool", "random-uuid")
    _run_tool(
        java, libs, data_dir,
        "kafka.tools.StorageTool", "format", "-t", cluster_id.strip().splitlines()[-1],
        "-c", str(data_dir / "server.properties"), "--standalone",
    )  # fmt: skip


def _probe_create_topic(
    bootstrap: str, timeout: float, config: dict[str, str] | None = None
) -> bool:
    """Whether a client can create (and delete) a topic right now: the broker truly serves."""
    host, port = _first_server(bootstrap)
    if not _port_open(host, port, timeout=min(timeout, 1.0)):
        return False
    admin = _admin(bootstrap, timeout, config)
    name = f"stockpipe-probe-{uuid.uuid4().hex[:12]}"
    try:
        admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=timeout)[name].result(
            timeout=timeout
        )
        admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout=timeout)
        return True
    except Exception:  # any failure means "not ready yet"; the caller retries until its deadline
        return False


def _wait_until_serving(
    bootstrap: str,
    deadline: float,
    proc: subprocess.Popen[bytes] | None = None,
    config: dict[str, str] | None = None,
) -> bool:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        wait = max(min(5.0, deadline - time.monotonic()), 0.5)
        if _probe_create_topic(bootstrap, timeout=wait, config=config):
            return True
        time.sleep(0.3)
    return False


@dataclass(frozen=True)
class _Broker:
    """How the launcher reaches the broker of a data dir: its clients' config and, when
    secured, the internal listener it manages the broker through."""

    client: dict[str, str]
    tls: security.TlsFiles | None = None
    internal: str | None = None
    listeners: dict[str, str] | None = None

    @classmethod
    def of(cls, settings: Settings, data_dir: Path, controller_port: int | None = None) -> _Broker:
        if not security.secured(settings):
            return cls(settings.kafka_config())
        host, port = _first_server(settings.kafka_bootstrap_servers)
        tls = None
        if settings.kafka_security_protocol.endswith("SSL"):
            tls = security.ensure_tls(data_dir, host)
        internal_port = _internal_port(data_dir, port)
        listeners = None
        if controller_port is not None:
            listeners = security.listener_properties(
                settings, host, port, internal_port, controller_port, tls
            )
        return cls(
            security.client_config(settings, tls),
            tls,
            f"127.0.0.1:{internal_port}",
            listeners,
        )

    def wait_until_serving(
        self, settings: Settings, deadline: float, proc: subprocess.Popen[bytes] | None = None
    ) -> bool:
        """Serving clients as the settings connect: a secured broker first gets their user."""
        if self.internal is not None:
            if not _wait_until_serving(self.internal, deadline, proc):
                return False
            security.upsert_user(settings, self.internal)
        return _wait_until_serving(settings.kafka_bootstrap_servers, deadline, proc, self.client)


# ---------------------------------------------------------------- start / stop / status


def start(settings: Settings, timeout: float = 60.0) -> bool:
    """Run the local broker at KAFKA_BOOTSTRAP_SERVERS, returning once it accepts clients.

    Returns True when this call started a broker, False when one already
    answered there (so callers stop only what they started). Raises
    `StockpipeError` for a missing Java or Maven, or a port taken by something
    that is not Kafka, and `ServiceUnavailable` (with the log tail) when the
    broker does not serve within `timeout` seconds.
    """
    bootstrap = settings.kafka_bootstrap_servers
    host, port = _first_server(bootstrap)
    data_dir = _data_dir(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir / ".lock"):
        broker = _Broker.of(settings, data_dir)
        # Checked under the lock: a concurrent `start` of this data dir may just have finished.
        if broker_reachable(bootstrap, config=broker.client):
            return False
        pid = _running_pid(data_dir)
        if pid is not None:
            # Ours and alive but not answering yet: still starting up, so wait for it.
            if broker.wait_until_serving(settings, time.monotonic() + timeout):
                return False
            raise ServiceUnavailable(
                f"the Kafka broker of {data_dir} runs (pid {pid}) but does not serve at "
                f"{bootstrap}; `stockpipe kafka stop` it and start again.\n{_logs_tail(data_dir)}"
            )
        if _port_open(host, port):
            raise StockpipeError(
                f"port {port} on {host} (KAFKA_BOOTSTRAP_SERVERS={bootstrap}) is taken by "
                "something that is not a Kafka broker; stop it, or set KAFKA_BOOTSTRAP_SERVERS "
                "to a free port (or to your own running broker)."
            )
        java = find_java()
        libs = fetch(settings)

        controller_port = _controller_port(data_dir, host, port)
        if _port_open(host, controller_port, timeout=0.5):
            raise StockpipeError(
                f"the Kafka controller port {controller_port} on {host} (recorded in "
                f"{data_dir / 'controller.port'}) is taken by another process; stop it, or "
                "use another STOCKPIPE_KAFKA_DATA_DIR."
            )
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        broker = _Broker.of(settings, data_dir, controller_port)
        props = data_dir / "server.properties"
        props.write_text(_server_properties(settings, data_dir, controller_port, broker.listeners))
        if not (data_dir / "data" / "meta.properties").exists():
            _format_storage(java, libs, data_dir)

        with (data_dir / "logs" / "console.log").open("ab") as console:
            proc = subprocess.Popen(
                _java_cmd(java, libs, data_dir, "kafka.Kafka", str(props)),
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and ignores its Ctrl-C
            )
        (data_dir / "broker.pid").write_text(f"{proc.pid}\n")

        # The timeout counts from the launch: a first fetch or format may take longer.
        if broker.wait_until_serving(settings, time.monotonic() + timeout, proc):
            return True
        exited = proc.poll()
        logs = _logs_tail(data_dir)
        _terminate(proc.pid)
        (data_dir / "broker.pid").unlink(missing_ok=True)
        if exited is not None and broker_reachable(bootstrap, config=broker.client):
            return False  # another broker took the port first (a concurrent start elsewhere)
        what = f"exited with code {exited}" if exited is not None else f"not ready in {timeout:g} s"
        raise ServiceUnavailable(
            f"the local Kafka broker at {bootstrap} {what}; data dir {data_dir}.\n{logs}"
        )


def _terminate(pid: int) -> None:
    """SIGTERM (Kafka shuts down cleanly), then SIGKILL after STOP_GRACE_SECONDS."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass


def stop(settings: Settings) -> bool:
    """Stop the broker started from STOCKPIPE_KAFKA_DATA_DIR; False when none was running."""
    data_dir = _data_dir(settings)
    if not data_dir.exists():
        return False
    with _locked(data_dir / ".lock"):
        pid = _running_pid(data_dir)
        if pid is None:
            return False
        _terminate(pid)
        (data_dir / "broker.pid").unlink(missing_ok=True)
        return True


def status(settings: Settings) -> dict[str, Any]:
    """What runs at KAFKA_BOOTSTRAP_SERVERS, with each topic's per-partition end offsets.

    Keys: `running` (a broker answers), `pid` (of the broker started from the
    data dir, None when none or when the answering broker is someone else's),
    `bootstrap`, `data_dir`, `kafka_version` (of the local jars), and `topics`:
    {name: {partition: end offset}}. End offsets (high watermarks) are shown
    because Bytewax keeps its consumer offsets in its recovery store, where
    Kafka's lag tools cannot see them.
    """
    bootstrap = settings.kafka_bootstrap_servers
    data_dir = _data_dir(settings)
    info: dict[str, Any] = {
        "running": False,
        "pid": _running_pid(data_dir),
        "bootstrap": bootstrap,
        "data_dir": str(data_dir),
        "kafka_version": kafka_version(),
        "topics": {},
    }
    client = _Broker.of(settings, data_dir).client if data_dir.exists() else settings.kafka_config()
    if not broker_reachable(bootstrap, config=client):
        return info
    info["running"] = True
    admin = _admin(bootstrap, 10.0, client)
    metadata = admin.list_topics(timeout=10)
    partitions = [
        TopicPartition(name, p)
        for name, topic in metadata.topics.items()
        if not name.startswith("__") and topic.error is None
        for p in topic.partitions
    ]
    topics: dict[str, dict[int, int]] = {}
    if partitions:
        futures = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=10
        )
        for tp, future in futures.items():
            try:
                end = future.result().offset
            except KafkaException:
                continue  # deleted since the metadata request (tests drop topics all the time)
            topics.setdefault(tp.topic, {})[tp.partition] = end
    info["topics"] = {name: dict(sorted(topics[name].items())) for name in sorted(topics)}
    return info


# ---------------------------------------------------------------- command line

kafka_app = typer.Typer(
    name="kafka",
    help="The local Apache Kafka broker (single node, KRaft) at KAFKA_BOOTSTRAP_SERVERS.",
    no_args_is_help=True,
    add_completion=False,
)
_out = Console(soft_wrap=True)  # paths and messages stay on one line


@kafka_app.command("start")
def start_command(
    timeout: str = typer.Option(
        "60s", help="How long to wait until the broker accepts clients (a duration: 90s, 2m)."
    ),
) -> None:
    """Start the broker in the background (no-op when one already answers)."""
    settings = load_settings()
    try:
        wait = parse_duration(timeout)
    except ValueError as exc:
        raise StockpipeError(f"--timeout: {exc}") from None
    began = time.monotonic()
    if start(settings, timeout=wait):
        info = status(settings)
        _out.print(
            f"started Apache Kafka {info['kafka_version']} at {info['bootstrap']} "
            f"(pid {info['pid']}, data {info['data_dir']}) in {time.monotonic() - began:.1f} s"
        )
    else:
        _out.print(f"a Kafka broker already answers at {settings.kafka_bootstrap_servers}")


@kafka_app.command("stop")
def stop_command() -> None:
    """Stop the broker started from STOCKPIPE_KAFKA_DATA_DIR (no-op when none runs)."""
    settings = load_settings()
    if stop(settings):
        _out.print(f"stopped the Kafka broker of {_data_dir(settings)}")
    else:
        _out.print(f"no Kafka broker of {_data_dir(settings)} was running")


@kafka_app.command("status")
def status_command(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Whether the broker runs, and each topic's per-partition end offsets."""
    info = status(load_settings())
    if json_output:
        typer.echo(json.dumps(info, indent=2))
        return
    state = "[green]running[/]" if info["running"] else "[red]not running[/]"
    if info["pid"]:
        state += f" (pid {info['pid']})"
    elif info["running"]:
        state += " (a broker not started from this data dir)"
    _out.print(f"Kafka at {info['bootstrap']}: {state}")
    _out.print(f"data dir {info['data_dir']}, local jars: Apache Kafka {info['kafka_version']}")
    if not info["topics"]:
        return
    table = Table("topic", "partitions", "end offsets by partition", "Σ end offsets")
    for name, ends in info["topics"].items():
        offsets = " ".join(f"{p}:{off}" for p, off in ends.items())
        table.add_row(name, str(len(ends)), offsets, str(sum(ends.values())))
    _out.print(table)


@kafka_app.command("fetch")
def fetch_command() -> None:
    """Fetch Apache Kafka's jars with Maven into STOCKPIPE_KAFKA_CACHE_DIR (once)."""
    settings = load_settings()
    libs = libs_dir(settings)
    if not _complete(libs, kafka_version()):
        _out.print(f"fetching Apache Kafka {kafka_version()} jars with Maven into {libs} ...")
    _out.print(f"Apache Kafka jars ready in {fetch(settings)}")
