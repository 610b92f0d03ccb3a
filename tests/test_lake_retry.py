"""Lake writes retry transient store errors and stop at once on permanent ones.

The stores are real: a local folder (fsspec local files, /dev/full for a full
disk) and a real S3 HTTP endpoint on loopback (moto server) written through
s3fs. Waits are on conditions (the retry counter), never on elapsed time.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions as boto
import fsspec
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from s3fs.errors import translate_boto_error

from flows.errors import StockpipeError
from flows.lake.retry import (
    LAKE_WRITE_FAILURES,
    LAKE_WRITE_RETRIES,
    LakeWriteError,
    classify,
    is_permanent,
    put_with_retry,
)

HANG_GUARD_S = 120  # only so a broken build fails instead of hanging; never asserted on


def _total(counter, kind: str | None = None) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and kind in (None, sample.labels.get("kind"))
    )


def _s3fs(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=endpoint,
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}},
    )


class _Moto:
    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.running = True
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def restart(self) -> None:
        """A new server on the same port (moto keeps its buckets in-process)."""
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.running = True


@pytest.fixture
def moto() -> Iterator[_Moto]:
    server = _Moto()
    yield server
    server.stop()


def _bucket(fs: s3fs.S3FileSystem) -> str:
    name = f"lake-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    return name


# -- permanent errors: LakeWriteError at once, put ran once, no backoff ----------------


def test_local_path_through_a_regular_file_fails_at_once(tmp_path: Path):
    (tmp_path / "not-a-folder").write_text("a file where the lake folder should be")
    url = str(tmp_path / "not-a-folder" / "lake" / "bars" / "part.parquet")
    fs = fsspec.filesystem("file", auto_mkdir=True)
    calls: list[int] = []
    sleeps: list[float] = []

    def put() -> None:
        calls.append(1)
        with fs.open(url, "wb") as fh:
            fh.write(b"PAR1")

    failures_before = _total(LAKE_WRITE_FAILURES, "bad_path")
    with pytest.raises(LakeWriteError) as info:
        put_with_retry(put, url, sleep=sleeps.append)
    assert calls == [1] and sleeps == []
    assert isinstance(info.value, StockpipeError)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert info.value.kind == "bad_path"
    message = str(info.value)
    assert url in message and "NotADirectoryError" in message
    assert "resumes from its last snapshot" in message
    assert _total(LAKE_WRITE_FAILURES, "bad_path") == failures_before + 1


def test_s3_bucket_that_does_not_exist_fails_at_once(moto: _Moto):
    fs = _s3fs(moto.endpoint)
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/prod/bars/part.parquet"
    calls: list[int] = []
    sleeps: list[float] = []

    def put() -> None:
        calls.append(1)
        fs.pipe_file(url, b"PAR1")

    retries_before = _total(LAKE_WRITE_RETRIES)
    failures_before = _total(LAKE_WRITE_FAILURES, "not_found")
    with pytest.raises(LakeWriteError) as info:
        put_with_retry(put, url, initial_delay_s=0.01, retry_cap_s=0.05, sleep=sleeps.append)
    assert calls == [1] and sleeps == []
    assert isinstance(info.value.__cause__, FileNotFoundError)  # s3fs: NoSuchBucket
    assert info.value.kind == "not_found"
    message = str(info.value)
    assert url in message and "check the bucket exists" in message
    assert _total(LAKE_WRITE_FAILURES, "not_found") == failures_before + 1
    assert _total(LAKE_WRITE_RETRIES) == retries_before


# -- transient errors: retried with backoff until the write succeeds -------------------


def test_s3_outage_is_retried_until_the_store_is_back(moto: _Moto):
    fs = _s3fs(moto.endpoint)
    bucket = _bucket(fs)
    url = f"s3://{bucket}/prod/bars/part.parquet"
    data = b"PAR1" + os.urandom(64) + b"PAR1"
    retries_before = _total(LAKE_WRITE_RETRIES)
    connection_before = _total(LAKE_WRITE_RETRIES, "connection")
    sleeps: list[float] = []
    slept = threading.Condition()

    def sleep(seconds: float) -> None:
        with slept:
            sleeps.append(seconds)
            slept.notify_all()
        time.sleep(seconds)

    result: dict[str, object] = {}

    def write() -> None:
        try:
            result["failures"] = put_with_retry(
                lambda: fs.pipe_file(url, data),
                url,
                initial_delay_s=0.05,
                retry_cap_s=0.2,
                sleep=sleep,
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            result["error"] = exc

    moto.stop()  # the store goes away
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    with slept:  # a condition: the retry counter rose by 3 (each failure notifies)
        assert slept.wait_for(
            lambda: _total(LAKE_WRITE_RETRIES) - retries_before >= 3, timeout=HANG_GUARD_S
        )
    assert thread.is_alive() and not result, result

    moto.restart()  # the store comes back on the same port, bucket and all
    thread.join(timeout=HANG_GUARD_S)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    failures = result["failures"]
    assert isinstance(failures, int) and failures >= 3
    assert _total(LAKE_WRITE_RETRIES) - retries_before == failures
    assert _total(LAKE_WRITE_RETRIES, "connection") - connection_before == failures
    assert sleeps == [min(0.05 * 2**i, 0.2) for i in range(failures)]  # capped backoff
    assert _s3fs(moto.endpoint).cat_file(url) == data


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_retried_until_space_is_free(tmp_path: Path, caplog):
    # /dev/full fails every write with ENOSPC; the third attempt has space again.
    url = str(tmp_path / "lake" / "bars" / "part.parquet")
    targets = iter(["/dev/full", "/dev/full", url])
    fs = fsspec.filesystem("file", auto_mkdir=True)
    sleeps: list[float] = []
    disk_full_before = _total(LAKE_WRITE_RETRIES, "disk_full")

    def put() -> None:
        with fs.open(next(targets), "wb") as fh:
            fh.write(b"PAR1")

    with caplog.at_level(logging.WARNING, logger="flows.lake.retry"):
        assert put_with_retry(put, url, initial_delay_s=0.01, sleep=sleeps.append) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(url in w and "No space left" in w for w in warnings)
    assert sleeps == [0.01, 0.02]
    assert Path(url).read_bytes() == b"PAR1"
    assert _total(LAKE_WRITE_RETRIES, "disk_full") == disk_full_before + 2


# -- the classification table ----------------------------------------------------------


def _s3_error(code: str, status: int, *, set_cause: bool = True) -> BaseException:
    """What s3fs raises for an S3 error response (its own translation)."""
    client_error = boto.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    return translate_boto_error(client_error, set_cause=set_cause)


def _dev_full_error() -> OSError:
    try:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError("/dev/full accepted a write")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        # S3 error responses, as s3fs translates them (ClientError kept as __cause__)
        (lambda: _s3_error("AccessDenied", 403), "access"),
        (lambda: _s3_error("InvalidAccessKeyId", 403), "access"),
        (lambda: _s3_error("SignatureDoesNotMatch", 403), "access"),
        (lambda: _s3_error("NoSuchBucket", 404), "not_found"),
        (lambda: _s3_error("InvalidBucketName", 400), "bad_request"),
        (lambda: _s3_error("PermanentRedirect", 301), "bad_request"),
        (lambda: _s3_error("SomeNewClientError", 400), "bad_request"),
        (lambda: _s3_error("SlowDown", 503), "throttled"),
        (lambda: _s3_error("ServiceUnavailable", 503), "throttled"),
        (lambda: _s3_error("Throttling", 400), "throttled"),
        (lambda: _s3_error("InternalError", 500), "server_error"),
        (lambda: _s3_error("SomeNewServerError", 502), "server_error"),
        (lambda: _s3_error("RequestTimeout", 400), "timeout"),
        (lambda: _s3_error("OperationAborted", 409), "io"),
        # ... and when s3fs drops the cause: by exception type and errno
        (lambda: _s3_error("AccessDenied", 403, set_cause=False), "access"),
        (lambda: _s3_error("NoSuchBucket", 404, set_cause=False), "not_found"),
        (lambda: _s3_error("SlowDown", 503, set_cause=False), "throttled"),
        (lambda: _s3_error("InternalError", 500, set_cause=False), "server_error"),
        # botocore errors s3fs passes through untranslated
        (lambda: boto.ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"), "access"),
        (lambda: boto.EndpointConnectionError(endpoint_url="http://s3"), "connection"),
        (lambda: boto.ConnectionClosedError(endpoint_url="http://s3"), "connection"),
        (lambda: boto.ConnectTimeoutError(endpoint_url="http://s3"), "timeout"),
        (lambda: boto.ReadTimeoutError(endpoint_url="http://s3"), "timeout"),
        (lambda: boto.NoCredentialsError(), "access"),
        # local OS errors
        (lambda: NotADirectoryError(errno.ENOTDIR, "Not a directory"), "bad_path"),
        (lambda: IsADirectoryError(errno.EISDIR, "Is a directory"), "bad_path"),
        (lambda: PermissionError(errno.EACCES, "Permission denied"), "access"),
        (lambda: FileNotFoundError(errno.ENOENT, "No such file"), "not_found"),
        (lambda: OSError(errno.EROFS, "Read-only file system"), "bad_path"),
        (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), "disk_full"),
        (lambda: OSError(errno.EIO, "I/O error"), "io"),
        (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection"),
        (lambda: TimeoutError("timed out"), "timeout"),
        # not a store error at all: a bug, retrying cannot help
        (lambda: ValueError("bad table"), "unexpected"),
    ],
)
def test_classification(make, kind):
    exc = make()
    assert classify(exc) == kind
    assert is_permanent(exc) is (
        kind in {"access", "not_found", "bad_path", "bad_request", "unexpected"}
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_transient():
    exc = _dev_full_error()
    assert exc.errno == errno.ENOSPC
    assert classify(exc) == "disk_full" and not is_permanent(exc)
