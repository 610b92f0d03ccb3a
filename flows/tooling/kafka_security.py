"""A secured listener for the local broker: TLS from a generated CA, SCRAM users.

When `KAFKA_SECURITY_PROTOCOL` is `SSL`, `SASL_SSL` or `SASL_PLAINTEXT`, the
local broker (`stockpipe kafka start`) serves that protocol at
`KAFKA_BOOTSTRAP_SERVERS`, so the clients' security settings are tested
against a real broker:

- TLS: a CA and a server certificate (for the bootstrap host, `localhost` and
  127.0.0.1) are generated once into `<data dir>/tls/`: `ca.pem` is what
  clients trust (`KAFKA_SSL_CA_LOCATION`), `server.pem` the broker's PEM key
  store. With a client certificate in the settings, the listener requires one
  signed by a CA in `KAFKA_SSL_CA_LOCATION` (mutual TLS).
- SASL: SCRAM-SHA-256 or SCRAM-SHA-512. The user of `KAFKA_SASL_USERNAME` is
  created (or its password updated) through the admin API on every start,
  and the broker keeps only salted hashes in its metadata log: no password is
  written to a file. PLAIN would need the passwords in the broker's
  configuration, so the local broker does not offer it (a managed cluster may).
- The broker's own traffic and the launcher's admin calls use a second,
  PLAINTEXT listener on loopback (`<data dir>/internal.port`). This is a test
  broker: production runs a managed or hardened cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from flows.errors import StockpipeError
from flows.settings import Settings

LISTENER = "CLIENT"
INTERNAL = "INTERNAL"
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate clients trust
    server: Path  # the broker's PEM key store: its private key (PKCS#8), certificate, the CA


def secured(settings: Settings) -> bool:
    return settings.kafka_security_protocol != "PLAINTEXT"


def ensure_tls(data_dir: Path, host: str) -> TlsFiles:
    """The CA and server certificate of this data dir, generated on first use."""
    folder = data_dir / "tls"
    files = TlsFiles(folder / "ca.pem", folder / "server.pem")
    if files.ca.exists() and files.server.exists():
        return files
    try:
        from cryptography import x509
    except ModuleNotFoundError:
        raise StockpipeError(
            "a TLS listener on the local broker needs the `cryptography` package to make its "
            "certificates: `pip install cryptography` (it comes with stockpipe[snowflake] and "
            "[dev])"
        ) from None
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockpipe local Kafka CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for name in {host, "127.0.0.1"}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(files.server, key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
    files.ca.write_bytes(ca.public_bytes(pem))
    return files


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def listener_properties(
    settings: Settings, host: str, port: int, internal_port: int, controller_port: int,
    tls: TlsFiles | None,
) -> dict[str, str]:  # fmt: skip
    """server.properties entries for the secured client listener and the internal one."""
    protocol = settings.kafka_security_protocol
    name = LISTENER.lower()
    props = {
        "listeners": (
            f"{LISTENER}://{host}:{port},{INTERNAL}://127.0.0.1:{internal_port},"
            f"CONTROLLER://{host}:{controller_port}"
        ),
        "advertised.listeners": f"{LISTENER}://{host}:{port},{INTERNAL}://127.0.0.1:{internal_port}",
        "inter.broker.listener.name": INTERNAL,
        "listener.security.protocol.map": (
            f"{LISTENER}:{protocol},{INTERNAL}:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
    }
    if protocol.endswith("SSL"):
        assert tls is not None
        props[f"listener.name.{name}.ssl.keystore.type"] = "PEM"
        props[f"listener.name.{name}.ssl.keystore.location"] = str(tls.server)
        if settings.kafka_ssl_certificate_location is not None:  # mutual TLS
            props[f"listener.name.{name}.ssl.client.auth"] = "required"
            props[f"listener.name.{name}.ssl.truststore.type"] = "PEM"
            props[f"listener.name.{name}.ssl.truststore.location"] = str(
                settings.kafka_ssl_ca_location or tls.ca
            )
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        if not mechanism.startswith("SCRAM-"):
            raise StockpipeError(
                f"KAFKA_SASL_MECHANISM={mechanism}: the local broker offers SCRAM-SHA-256 and "
                "SCRAM-SHA-512 only (PLAIN would keep the passwords in its configuration file)"
            )
        props[f"listener.name.{name}.sasl.enabled.mechanisms"] = mechanism
        props[f"listener.name.{name}.{mechanism.lower()}.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
    return props


def upsert_user(settings: Settings, internal: str, timeout: float = 30.0) -> None:
    """Create the SASL user of the settings, or set its password, through `internal`."""
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    mechanism = ScramMechanism[settings.kafka_sasl_mechanism.replace("-", "_")]
    password = settings.kafka_sasl_password
    assert password is not None and settings.kafka_sasl_username  # the settings check it
    admin = AdminClient({"bootstrap.servers": internal, "log_level": 0})
    upsert = UserScramCredentialUpsertion(
        settings.kafka_sasl_username,
        ScramCredentialInfo(mechanism, SCRAM_ITERATIONS),
        password.get_secret_value().encode(),
    )
    try:
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=timeout)
    except KafkaException as exc:
        raise StockpipeError(
            f"could not create the SASL user {settings.kafka_sasl_username!r} on the local "
            f"broker: {exc.args[0].str() if exc.args else exc}"
        ) from None


def client_config(settings: Settings, tls: TlsFiles | None) -> dict[str, str]:
    """The settings' client config, trusting the local CA when the settings name no CA."""
    conf = settings.kafka_config()
    if tls is not None and "ssl.ca.location" not in conf:  # tls: only for an SSL protocol
        conf["ssl.ca.location"] = str(tls.ca)
    return conf
