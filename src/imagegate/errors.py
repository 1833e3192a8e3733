"""The one error tree of imagegate.

Every failure a caller can see is one of these classes::

    ImagegateError
     ├── ConfigError            a config file, key or value is wrong (names file, key, allowed)
     ├── MissingDependency      an optional extra is not installed (names the pip line)
     ├── Cancelled              the caller cancelled the request or job
     ├── StorageError           the image store refused or did not answer (names the backend)
     ├── QueueFull              the job queue is full (retry_after)
     ├── Interrupted            the process running a job stopped; it could not run again
     ├── AllProvidersFailed     every provider on the route failed (carries each attempt)
     └── ProviderError          one provider failed one attempt
          ├── InvalidRequest     the request breaks a limit (names the field and the limit)
          ├── ConnectError       refused, reset, DNS failure
          ├── Timeout            a stage ran past its budget (stage: dns, connect, tls,
          │                      first_byte, read, total)
          ├── AuthError          the key or token was refused
          ├── RateLimited        slow down (retry_after)
          ├── QuotaExceeded      the account is out of credit or quota
          ├── ContentFiltered    the provider's own safety filter refused the prompt or image
          ├── Unavailable        sleeping, building, paused, loading, queue full (retry_after)
          ├── UpstreamError      the provider answered 5xx
          └── ProtocolError      the answer was malformed or truncated

Two properties belong to each class, and the router reads only these:

- ``retryable``: trying the same provider again may succeed.
- ``failover``: trying the next provider on the route may succeed.

``may_have_been_billed`` tells whether a paid provider may have charged for the attempt, in
which case the router does not resend the request elsewhere unless the config allows it.

Every message ends with what to do about it, and every error carries that as ``fix`` too
(``cause`` is the rest): pass ``fix=`` when raising; a message written the older way, with
the fix after its last "; ", gives it up once, here.

Every message (and fix) is redacted when the error is made (``imagegate.redaction``), so no
secret the process holds reaches a stored record, an answer, an event or a log through an
error, whatever an upstream echoed.

The errors import only ``imagegate.attempts`` (the record of one try, which
``AllProvidersFailed`` carries) and ``imagegate.redaction``: this module is the floor every
other one stands on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from imagegate.attempts import Attempt
from imagegate.redaction import redact

Stage = Literal["config", "dns", "connect", "tls", "first_byte", "read", "total", "runtime"]

__all__ = [
    "AllProvidersFailed",
    "AuthError",
    "Cancelled",
    "ConfigError",
    "ConnectError",
    "ContentFiltered",
    "ImagegateError",
    "Interrupted",
    "InvalidRequest",
    "MissingDependency",
    "ProtocolError",
    "ProviderError",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "Stage",
    "StorageError",
    "Timeout",
    "Unavailable",
    "UpstreamError",
    "error_from_dict",
]


class ImagegateError(Exception):
    """The root of every error imagegate raises on purpose."""

    exit_code: ClassVar[int] = 1
    recorded: ClassVar[tuple[str, ...]] = ("fix",)
    """The attributes (besides the message) a job row keeps, so the error can be rebuilt."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        """``fix`` (what to do about it) ends the message for people to read (appended after
        "; " unless the message ends with it already); a message written with its fix at the
        end, after "; ", and no ``fix`` gives it up here."""
        message = redact(message)
        if fix:
            fix = redact(fix)
            message = message if message.endswith(fix) else f"{message}; {fix}"
        else:
            fix = message.rpartition("; ")[2] or None if "; " in message else None
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.attempts: list[Attempt] = []

    @property
    def message(self) -> str:
        """The whole message, its fix at the end; redacted, however it was set."""
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = redact(value)
        self.args = (self._message,)

    @property
    def fix(self) -> str | None:
        """What to do about it, as a field: JSON bodies, --json, the doctor and the page read
        it; redacted, however it was set."""
        return self._fix

    @fix.setter
    def fix(self, value: str | None) -> None:
        self._fix = redact(value) if value else value

    @property
    def cause(self) -> str:
        """What happened: the message without its fix."""
        if self.fix and self.message.endswith(self.fix):
            return self.message[: -len(self.fix)].rstrip("; .") or self.message
        return self.message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """What a job row keeps of this error (its attempts are kept beside it)."""
        data: dict[str, Any] = {
            "type": type(self).__name__,
            "message": str(self),
            "stage": getattr(self, "stage", None),
        }
        for cls in reversed(type(self).__mro__):
            for name in vars(cls).get("recorded", ()):
                value = getattr(self, name, None)
                if isinstance(value, ImagegateError):
                    data[name] = value.to_dict()
                elif value is not None:
                    data[name] = value
        return data


def _error_classes(root: type[ImagegateError]) -> dict[str, type[ImagegateError]]:
    found = {root.__name__: root}
    for sub in root.__subclasses__():
        found |= _error_classes(sub)
    return found


def error_from_dict(data: Mapping[str, Any], attempts: Sequence[Attempt] = ()) -> ImagegateError:
    """The error a job row recorded, rebuilt as the same class with the same fields.

    A type imagegate does not know (an unexpected exception's) comes back as ImagegateError.
    """
    cls = _error_classes(ImagegateError).get(str(data.get("type")), ImagegateError)
    message = str(data.get("message", ""))
    provider = data.get("provider")
    if issubclass(cls, ProviderError) and provider:
        message = message.removeprefix(f"{provider}: ")  # __str__ adds it back
    error = cls.__new__(cls)
    ImagegateError.__init__(error, message)
    for klass in cls.__mro__:
        for name in vars(klass).get("recorded", ()):
            value = data.get(name)
            if name == "fix" and value is None:
                continue  # a row written before fixes were recorded: the message has it
            if name == "last":
                value = error_from_dict(value) if isinstance(value, Mapping) else None
            setattr(error, name, value)
    error.attempts = list(attempts)
    return error


class ConfigError(ImagegateError):
    """A config file, key or value is wrong; names the file, the key and the allowed values."""

    exit_code = 2
    recorded: ClassVar[tuple[str, ...]] = ("file", "key", "allowed")

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        allowed: Sequence[str] | None = None,
        fix: str | None = None,
    ) -> None:
        where = f"{file}: " if file else ""
        what = f"{key}: " if key else ""
        tail = f" (allowed: {', '.join(allowed)})" if allowed else ""
        super().__init__(f"{where}{what}{message}{tail}", fix=fix)
        self.file = file
        self.key = key
        self.allowed = list(allowed) if allowed else None


class MissingDependency(ImagegateError):
    """An optional extra is not installed; the message is the exact pip line to run."""

    exit_code = 2
    recorded: ClassVar[tuple[str, ...]] = ("extra", "module")

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module} is not installed; it comes with the {extra!r} extra",
            fix=f"pip install 'imagegate[{extra}]'",
        )
        self.extra = extra
        self.module = module


class StorageError(ImagegateError):
    """The image store (``[storage] backend``) refused or did not answer; names the backend
    and the store's own error class and reason."""

    recorded: ClassVar[tuple[str, ...]] = ("backend",)

    def __init__(self, message: str, *, backend: str | None = None, fix: str | None = None):
        super().__init__(f"{backend} storage: {message}" if backend else message, fix=fix)
        self.backend = backend


class Cancelled(ImagegateError):
    """The caller cancelled the request or the job before it finished."""


class QueueFull(ImagegateError):
    """The job queue holds ``server.max_queue`` jobs already; try again after ``retry_after``."""

    recorded: ClassVar[tuple[str, ...]] = ("depth", "retry_after")

    def __init__(self, depth: int, retry_after: float) -> None:
        super().__init__(
            f"the job queue is full ({depth} jobs waiting)",
            fix=f"retry after {math.ceil(retry_after)} s, or raise server.max_queue",
        )
        self.depth = depth
        self.retry_after = retry_after


class Interrupted(ImagegateError):
    """The process running the job stopped, and the job could not be run again."""


class ProviderError(ImagegateError):
    """One provider failed one attempt."""

    retryable: ClassVar[bool] = False
    failover: ClassVar[bool] = True
    billable: ClassVar[bool] = False
    recorded: ClassVar[tuple[str, ...]] = (
        "provider",
        "stage",
        "elapsed_s",
        "retry_after",
        "billed",
    )

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        stage: Stage | None = None,
        elapsed_s: float | None = None,
        retry_after: float | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.provider = provider
        self.stage = stage
        self.elapsed_s = elapsed_s
        self.retry_after = retry_after
        self.billed: bool | None = None
        """Set by a provider that knows better than the class, e.g. after a task was accepted."""

    @property
    def may_have_been_billed(self) -> bool:
        """Whether a paid provider may have charged for this attempt."""
        return self.billed if self.billed is not None else self._billed_by_default()

    def _billed_by_default(self) -> bool:
        return self.billable

    def __str__(self) -> str:
        prefix = f"{self.provider}: " if self.provider else ""
        return f"{prefix}{self.message}"


class InvalidRequest(ProviderError):
    """The request breaks a limit; names the field and the limit."""

    exit_code = 2
    recorded: ClassVar[tuple[str, ...]] = ("field", "limit")

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        limit: str | None = None,
        provider: str | None = None,
        elapsed_s: float | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, elapsed_s=elapsed_s, fix=fix)
        self.field = redact(field) if field else field
        self.limit = redact(limit) if limit else limit


class ConnectError(ProviderError):
    """The connection was refused or reset, or the host name did not resolve."""

    retryable = True

    def _billed_by_default(self) -> bool:
        """A reset after the request went out may come after the provider billed it."""
        return self.stage in ("first_byte", "read")


class Timeout(ProviderError):
    """A stage ran past its budget; ``stage`` says which."""

    retryable = True

    def _billed_by_default(self) -> bool:
        """Only a timeout after the request body went out may have been billed."""
        return self.stage not in ("dns", "connect", "tls", "config")


class AuthError(ProviderError):
    """The provider refused the key or token."""


class RateLimited(ProviderError):
    """The provider asked us to slow down, for ``retry_after`` seconds when it said."""

    retryable = True


class QuotaExceeded(ProviderError):
    """The account is out of credit or quota."""


class ContentFiltered(ProviderError):
    """The provider's own safety filter refused the prompt or the image."""

    failover = False


class Unavailable(ProviderError):
    """The provider is sleeping, building, paused, loading a model or its queue is full."""

    retryable = True


class UpstreamError(ProviderError):
    """The provider answered with a server error."""

    retryable = True


class ProtocolError(ProviderError):
    """The provider's answer was malformed, truncated or of the wrong type."""

    billable = True


class AllProvidersFailed(ImagegateError):
    """Every provider on the route failed; ``attempts`` holds each one."""

    exit_code = 3
    recorded: ClassVar[tuple[str, ...]] = ("last",)

    def __init__(
        self,
        message: str,
        attempts: Sequence[Attempt],
        last: ProviderError | None = None,
        *,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.attempts = list(attempts)
        self.last = last
