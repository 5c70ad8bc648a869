"""Domain errors: what went wrong, in words that say what was expected and what came.

Code below the HTTP layer raises these and never builds responses; ``service.api.errors`` is the one place that
maps them to HTTP status codes and headers.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service answers on purpose.

    Attributes:
        detail: the sentence the client gets.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInputError(ServiceError):
    """The request is well-formed HTTP but its content cannot be used (shape, range, type, encoding)."""


class ModelNotFoundError(ServiceError):
    """The request names a model that is not in ``MODEL_DIR``."""


class PayloadTooLargeError(ServiceError):
    """The body, ``n`` or the number of items is over a configured limit."""


class UnauthorizedError(ServiceError):
    """``API_KEY`` is set and the request's bearer token is missing or wrong."""


class ForbiddenError(ServiceError):
    """The route is off (``ADMIN_API_KEY`` unset), or the key presented may not use it (``API_KEY`` on admin routes)."""


class UnavailableError(ServiceError):
    """The service cannot take the request now (queue full, model loading, shutting down).

    Attributes:
        retry_after_s: when to try again (``Retry-After``), None when retrying will not help.
    """

    def __init__(self, detail: str, retry_after_s: int | None = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class DeviceOutOfMemoryError(UnavailableError):
    """The device ran out of memory even for a single item, after the batch was split down to one item per pass.

    The service stays ready: a later try, or the same request once other work has finished, may fit.
    """


class DeadlineExceededError(ServiceError):
    """The request outlived ``REQUEST_TIMEOUT_S``; its queued work was dropped."""


class InferenceFailedError(ServiceError):
    """The model raised while running a batch (a server-side fault, never caused by validated input)."""


class ReferenceMissingError(ServiceError):
    """An anomaly score needs reference scores the model's card lacks (exported before that score existed)."""
