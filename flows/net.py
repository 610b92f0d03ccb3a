"""Free local ports, and why a Kafka broker cannot be used (for every command that reaches one)."""

from __future__ import annotations

import random
import socket

from flows.errors import ServiceUnavailable, StockpipeError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind `host:port` now: nothing listens there, and no
    connection holds it as its local port (which a connect test does not see)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range(default: tuple[int, int] = (32768, 60999)) -> tuple[int, int]:
    """The ports the OS gives outgoing connections (Linux's setting, else its default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = (int(v) for v in fh.read().split()[:2])
            return low, high
    except (OSError, ValueError):
        return default


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p + count - 1 are free at `host` (a broker's listener and
    the controller and internal listeners next to it), chosen outside the OS's ephemeral
    range (below it, or above it when there is no room below): a port the OS picks
    (free_port) may next be any connection's local port, and a broker that then binds
    it fails with "Address already in use"."""
    low, high = _ephemeral_range()
    if low - count > 2048:
        first, last = max(1024, low - 12_000), low - count
    elif 65535 - high - count > 1024:
        first, last = high + 1, 65535 - count
    else:  # no room outside it: ports the OS picks, checked like the others
        first = last = 0
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(first, last) if last > first else free_port(host)
        if port + count - 1 <= 65535 and all(port_free(host, port + k) for k in range(count)):
            return port
    raise ServiceUnavailable(f"no {count} adjacent free ports on {host}")


def kafka_refusal(config: dict[str, str], timeout: float = 5.0) -> str | None:
    """Why a Kafka broker that answers refuses these client settings, or None.

    Asked after a client failed to reach the brokers: a wrong SASL password or
    an untrusted certificate otherwise looks like a broker that is down.
    librdkafka's reasons name no secret.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    host, _, port = config.get("bootstrap.servers", "").split(",")[0].strip().rpartition(":")
    try:  # nothing listens: no broker to refuse anything (and no timeout to wait out)
        socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
    except (OSError, ValueError):
        return None
    seen: list[KafkaError] = []
    admin = AdminClient({**config, "error_cb": seen.append, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException:
        admin.poll(0.5)  # error callbacks are served by poll
    for err in seen:
        if err.code() == KafkaError._AUTHENTICATION:
            return (
                f"the broker refused the SASL credentials ({err.str()}): check "
                "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            )
        if err.code() == KafkaError._SSL:
            return (
                f"the TLS handshake failed ({err.str()}): check KAFKA_SSL_CA_LOCATION "
                "and, for mutual TLS, KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
            )
    return None


def kafka_unusable(config: dict[str, str], reason: object = None) -> StockpipeError:
    """The error for a broker that cannot be used: settings it refuses (a `StockpipeError`,
    exit 2), or a broker that does not answer (`ServiceUnavailable`, exit 69)."""
    servers = config.get("bootstrap.servers", "?")
    refusal = kafka_refusal(config)
    if refusal is not None:
        return StockpipeError(f"Kafka at {servers} is reachable, but {refusal}")
    because = f" ({reason})" if reason else ""
    return ServiceUnavailable(
        f"cannot reach Kafka at {servers}{because}: start the local broker with "
        "`stockpipe kafka start`, or set KAFKA_BOOTSTRAP_SERVERS to a running one"
    )
