"""Lake writes that retry transient store errors and stop at once on permanent ones.

A write to the lake (a local folder or S3/MinIO through fsspec/s3fs) either
succeeds, fails for a while (store down, throttled, 5xx, timeouts, a full disk)
or can never succeed as configured (access denied, no such bucket, a lake path
through a regular file). `put_with_retry` retries the first kind with capped
exponential backoff for as long as it takes, so the dataflow waits (back
pressure) and no batch is skipped; the second kind raises `LakeWriteError` at
once, so the stream stops with a message the user can act on and resumes from
its last recovery snapshot when restarted.

How s3fs reports store errors (s3fs/errors.py, s3fs/core.py `_error_wrapper`):
an HTTP error response (botocore `ClientError`) becomes a builtin exception by
its S3 code, PermissionError for AccessDenied/InvalidAccessKeyId/
SignatureDoesNotMatch/403, FileNotFoundError for NoSuchBucket/NoSuchKey/404,
an OSError with an errno otherwise, with the `ClientError` kept as `__cause__`
(sometimes dropped). A store that cannot be reached is not translated: the
botocore error itself is raised (`EndpointConnectionError`,
`ConnectTimeoutError`, `ReadTimeoutError`, ...). So the classification reads
the S3 error code and HTTP status from a `ClientError` in the cause chain when
there is one, and falls back to the exception type and errno.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from flows.errors import ServiceUnavailable, StockpipeError

try:  # s3fs depends on aiobotocore -> botocore; the local lake works without them
    import botocore.exceptions as _boto
    from botocore.parsers import ResponseParserError as _ResponseParserError
except ImportError:  # pragma: no cover
    _boto = None  # type: ignore[assignment]

try:
    import aiohttp as _aiohttp
except ImportError:  # pragma: no cover
    _aiohttp = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LAKE_WRITE_RETRIES = Counter(
    "stockpipe_lake_write_retries_total",
    "Lake writes that failed with a transient store error and were retried.",
    ["kind"],
)
LAKE_WRITE_FAILURES = Counter(
    "stockpipe_lake_write_failures_total",
    "Lake writes that failed with a permanent store error and were not retried.",
    ["kind"],
)

# `kind` label values (a fixed, small set).
# Permanent:
ACCESS = "access"  # credentials missing/invalid, 403, local permission denied
NOT_FOUND = "not_found"  # no such bucket (or key, upload), missing local folder
BAD_PATH = "bad_path"  # a lake path through a regular file, onto a folder, read-only fs
BAD_REQUEST = "bad_request"  # other 4xx, invalid argument/name, object too large
UNEXPECTED = "unexpected"  # not a store error (a bug): retrying cannot help
# Transient:
CONNECTION = "connection"  # store unreachable, connection refused/reset/closed
TIMEOUT = "timeout"
THROTTLED = "throttled"  # SlowDown, 429, 503, throttling codes
SERVER_ERROR = "server_error"  # 5xx, InternalError
DISK_FULL = "disk_full"  # ENOSPC, EDQUOT: space may be freed
IO = "io"  # other I/O trouble (EIO, EBUSY, unknown S3 codes, ...)

PERMANENT_KINDS = frozenset({ACCESS, NOT_FOUND, BAD_PATH, BAD_REQUEST, UNEXPECTED})

# S3 error codes (the `Code` of an error response) read from a botocore ClientError.
_PERMANENT_CODES: dict[str, str] = {
    **dict.fromkeys(
        [
            "AccessDenied",
            "AccountProblem",
            "AllAccessDisabled",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
            "TokenRefreshRequired",
            "InvalidSecurity",
            "NotSignedUp",
            "InvalidPayer",
            "RequestTimeTooSkewed",  # the host clock must be fixed
            "AuthorizationHeaderMalformed",  # wrong region for the bucket
            "CredentialsNotSupported",
            "UnrecognizedClientException",
            "Forbidden",
        ],
        ACCESS,
    ),
    **dict.fromkeys(
        ["NoSuchBucket", "NoSuchKey", "NoSuchUpload", "NoSuchVersion", "NotFound"],
        NOT_FOUND,
    ),
    **dict.fromkeys(
        [
            "InvalidBucketName",
            "InvalidArgument",
            "InvalidRequest",
            "InvalidURI",
            "KeyTooLongError",
            "EntityTooLarge",
            "EntityTooSmall",
            "InvalidObjectState",
            "InvalidStorageClass",
            "InvalidBucketState",
            "MethodNotAllowed",
            "NotImplemented",
            "MalformedXML",
            "MissingContentLength",
            "PermanentRedirect",  # the bucket lives in another region/endpoint
            "PreconditionFailed",
        ],
        BAD_REQUEST,
    ),
}
_TRANSIENT_CODES: dict[str, str] = {
    **dict.fromkeys(
        [
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "ThrottledException",
            "RequestThrottled",
            "RequestThrottledException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "ProvisionedThroughputExceededException",
            "BandwidthLimitExceeded",
            "ServiceUnavailable",
            "503",
        ],
        THROTTLED,
    ),
    **dict.fromkeys(["InternalError", "InternalFailure", "500", "502", "504"], SERVER_ERROR),
    **dict.fromkeys(["RequestTimeout", "RequestTimeoutException", "408"], TIMEOUT),
    **dict.fromkeys(
        [
            "OperationAborted",  # a conflicting operation on the bucket is in progress
            "TemporaryRedirect",  # a new bucket's DNS is still propagating
            "IncompleteBody",  # the upload was cut short in transit
            "BadDigest",  # the body was corrupted in transit
            "XAmzContentSHA256Mismatch",  # ditto (s3fs retries it too)
            "RestoreAlreadyInProgress",
        ],
        IO,
    ),
}

# errno of a plain OSError (no more specific builtin subclass).
_TRANSIENT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: DISK_FULL,
    errno.ETIMEDOUT: TIMEOUT,
    errno.ECONNREFUSED: CONNECTION,
    errno.ECONNRESET: CONNECTION,
    errno.ECONNABORTED: CONNECTION,
    errno.EHOSTUNREACH: CONNECTION,
    errno.ENETUNREACH: CONNECTION,
    errno.ENETDOWN: CONNECTION,
    errno.ENETRESET: CONNECTION,
    errno.EPIPE: CONNECTION,
    errno.EBUSY: THROTTLED,  # s3fs: SlowDown, ServiceUnavailable, 503, 409
    errno.EAGAIN: IO,
    errno.EINTR: IO,
    errno.EIO: IO,  # s3fs: an S3 code it does not know
    getattr(errno, "EREMOTEIO", errno.EIO): SERVER_ERROR,  # s3fs: InternalError, 500
    errno.ESTALE: IO,
    errno.ENOBUFS: IO,
    errno.ENOMEM: IO,
}
_PERMANENT_ERRNOS: dict[int, str] = {
    errno.EACCES: ACCESS,
    errno.EPERM: ACCESS,  # s3fs: InvalidBucketState, MethodNotAllowed, 405
    errno.ENOENT: NOT_FOUND,
    errno.ENOTDIR: BAD_PATH,
    errno.EISDIR: BAD_PATH,
    errno.EEXIST: BAD_PATH,
    errno.EROFS: BAD_PATH,
    errno.ELOOP: BAD_PATH,
    errno.ENAMETOOLONG: BAD_REQUEST,
    errno.EINVAL: BAD_REQUEST,  # s3fs: most 400 codes
    errno.EMSGSIZE: BAD_REQUEST,  # s3fs: EntityTooLarge, MetadataTooLarge
    errno.EFBIG: BAD_REQUEST,
    errno.ENOSYS: BAD_REQUEST,  # s3fs: NotImplemented, 501
    getattr(errno, "EREMCHG", errno.ENOENT): BAD_REQUEST,  # s3fs: 301/307 redirects
}

_HINTS = {
    ACCESS: "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) are valid and "
    "may write to the lake, and for a local lake that the folder is writable",
    NOT_FOUND: "check the bucket exists (create it, or fix STOCKPIPE_LAKE_URL) and the "
    "credentials may write to it",
    BAD_PATH: "check STOCKPIPE_LAKE_URL: every parent of the lake path must be a writable "
    "folder, not a file",
    BAD_REQUEST: "check STOCKPIPE_LAKE_URL and S3_ENDPOINT_URL (bucket name, region, endpoint)",
    UNEXPECTED: "this is not a store error; report it with the log",
}


class LakeWriteError(StockpipeError):
    """A lake write failed with an error that retrying cannot fix."""

    def __init__(self, url: str, error: BaseException, kind: str = UNEXPECTED):
        self.url = url
        self.error = error
        self.kind = kind
        hint = _HINTS.get(kind, _HINTS[UNEXPECTED])
        super().__init__(
            f"cannot write {url} to the lake: {_describe(error)}. "
            f"This error is permanent, so it was not retried: {hint}; "
            "the stream resumes from its last snapshot when restarted."
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _causes(exc: BaseException):
    """`exc` and its explicit causes (`raise ... from`, s3fs sets `__cause__`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _client_error_info(exc: BaseException) -> tuple[str | None, int | None] | None:
    """(S3 code, HTTP status) of the first error response in the cause chain, if any."""
    for err in _causes(exc):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            code = response["Error"].get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return (str(code) if code else None, int(status) if status else None)
    return None


def _classify_response(code: str | None, status: int | None) -> str | None:
    if code in _PERMANENT_CODES:
        return _PERMANENT_CODES[code]
    if code in _TRANSIENT_CODES:
        return _TRANSIENT_CODES[code]
    if status is None and code and code.isdigit():
        status = int(code)
    if status is None:
        return None
    if status == 429:
        return THROTTLED
    if status in (408,):
        return TIMEOUT
    if status == 409:
        return IO  # a conflicting operation in progress
    if status == 503:
        return THROTTLED
    if status >= 500:
        return SERVER_ERROR
    if status in (401, 403):
        return ACCESS
    if status == 404:
        return NOT_FOUND
    if status >= 300:
        return BAD_REQUEST
    return None


def _classify_botocore(exc: BaseException) -> str | None:
    if _boto is None or not isinstance(exc, _boto.BotoCoreError):
        return None
    if isinstance(exc, _boto.ConnectTimeoutError | _boto.ReadTimeoutError):
        return TIMEOUT
    if isinstance(exc, _boto.ConnectionError | _boto.HTTPClientError):
        return CONNECTION  # EndpointConnectionError, ConnectionClosedError, SSL, proxy
    if isinstance(
        exc,
        _boto.IncompleteReadError
        | _boto.ResponseStreamingError
        | _ResponseParserError  # s3fs: throttling can send invalid XML
        | _boto.CredentialRetrievalError,  # e.g. the metadata service did not answer
    ):
        return IO
    # NoCredentialsError, PartialCredentialsError, ParamValidationError, NoRegionError, ...
    if isinstance(exc, _boto.NoCredentialsError | _boto.PartialCredentialsError):
        return ACCESS
    return BAD_REQUEST


def classify(exc: BaseException) -> str:
    """The `kind` of a lake write error; permanent iff it is in `PERMANENT_KINDS`."""
    if isinstance(exc, LakeWriteError):
        return exc.kind
    info = _client_error_info(exc)
    if info is not None:
        kind = _classify_response(*info)
        if kind is not None:
            return kind
    for err in _causes(exc):
        kind = _classify_botocore(err)
        if kind is not None:
            return kind
    if isinstance(exc, PermissionError):
        return ACCESS
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND
    if isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError):
        return BAD_PATH
    if isinstance(exc, TimeoutError):  # also asyncio/fsspec FSTimeoutError, socket.timeout
        return TIMEOUT
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe
        return CONNECTION
    if isinstance(exc, OSError):
        if exc.errno in _PERMANENT_ERRNOS:
            return _PERMANENT_ERRNOS[exc.errno]
        if exc.errno in _TRANSIENT_ERRNOS:
            return _TRANSIENT_ERRNOS[exc.errno]
        return IO  # unknown I/O trouble: keep the data, keep trying (logged, counted)
    if _aiohttp is not None and isinstance(exc, _aiohttp.ClientError):
        return CONNECTION  # server disconnected, payload error
    if isinstance(exc, ServiceUnavailable):
        return CONNECTION
    return UNEXPECTED


def is_permanent(exc: BaseException) -> bool:
    """True if retrying the write cannot help (see the module docstring and `classify`)."""
    return classify(exc) in PERMANENT_KINDS


def put_with_retry(
    put: Callable[[], None],
    url: str,
    *,
    retry_cap_s: float = 30.0,
    initial_delay_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Call `put()` until it succeeds; return the number of failed attempts survived.

    A transient error is logged (naming `url`), counted in
    `stockpipe_lake_write_retries_total` and retried after a backoff that
    doubles from `initial_delay_s` up to `retry_cap_s`, without limit: the
    caller waits rather than skipping the write. A permanent error is counted
    in `stockpipe_lake_write_failures_total` and raised at once as
    `LakeWriteError` (the original error as its `__cause__`).
    """
    if initial_delay_s <= 0 or retry_cap_s < initial_delay_s:
        raise ValueError("need 0 < initial_delay_s <= retry_cap_s")

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        kind = classify(exc) if exc is not None else UNEXPECTED
        LAKE_WRITE_RETRIES.labels(kind=kind).inc()
        log.warning(
            "lake write of %s failed (attempt %d, %s): %s; retrying in %.1fs",
            url,
            state.attempt_number,
            kind,
            _describe(exc) if exc is not None else "?",
            state.upcoming_sleep,
        )

    retrying = Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and not is_permanent(exc)),
        wait=wait_exponential(multiplier=initial_delay_s, max=retry_cap_s),  # no stop: wait on
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        retrying(put)
    except Exception as exc:  # only a permanent error gets out of the retrying
        kind = classify(exc)
        LAKE_WRITE_FAILURES.labels(kind=kind).inc()
        error = LakeWriteError(url, exc, kind)
        log.error("%s", error)
        raise error from exc
    failures = retrying.statistics.get("attempt_number", 1) - 1
    if failures:
        log.info("lake write of %s succeeded after %d failed attempts", url, failures)
    return failures
