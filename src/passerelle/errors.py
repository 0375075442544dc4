"""The one root of every error passerelle raises on purpose.

Each subclass says what went wrong in words a user can act on. The HTTP layer maps
these classes to status codes in a single table; nothing here knows about HTTP.
"""

from __future__ import annotations


class PasserelleError(Exception):
    """Base class of every error meant to be shown to a user."""


class NotFoundError(PasserelleError):
    """A model, version, alias, dataset or other named thing does not exist."""


class InvalidReferenceError(PasserelleError):
    """A reference such as ``churn:x`` cannot be parsed."""


class ConflictError(PasserelleError):
    """The request contradicts the current state (duplicate name, immutable field...)."""


class InvalidInputError(PasserelleError):
    """Data or arguments given by the user are not acceptable."""


class SchemaError(InvalidInputError):
    """Data does not match a signature. ``problems`` lists each one."""

    def __init__(self, message: str, problems: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UnknownFlavorError(InvalidInputError):
    """No installed flavor has this name, or none recognises the artifact."""


class IntegrityError(PasserelleError):
    """Stored content does not match what was recorded (checksum mismatch, missing file)."""


class TrustRequiredError(PasserelleError):
    """Loading would execute code from a file nobody vouched for."""


class MissingDependencyError(PasserelleError):
    """An optional extra is needed; the message carries the exact install command."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is not installed; install it with: pip install 'passerelle[{extra}]'")


class StoreError(PasserelleError):
    """The metadata database or the artifact store cannot be used."""


class PayloadTooLargeError(InvalidInputError):
    """A request is larger than the configured limits (bytes or rows)."""


class OverloadedError(PasserelleError):
    """The server is saturated; the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelError(PasserelleError):
    """The model itself raised while predicting; ``request_id`` finds it in the logs."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(f"{message} (request id {request_id})")
        self.request_id = request_id
