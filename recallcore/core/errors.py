"""Expected errors: each carries the gRPC status it maps to (service.py maps them).

Anything else raised inside the server is a bug and answers INTERNAL.
"""


class RecallError(Exception):
    """An expected failure with a status name from grpc.StatusCode."""

    status = "INTERNAL"


class InvalidArgument(RecallError):
    """Client input is malformed; the message names the field."""

    status = "INVALID_ARGUMENT"


class ResourceExhausted(RecallError):
    """A size limit was exceeded, or the store is full."""

    status = "RESOURCE_EXHAUSTED"


class FailedPrecondition(RecallError):
    """The node cannot do this now (e.g. a write sent to a follower)."""

    status = "FAILED_PRECONDITION"


class Unavailable(RecallError):
    """The node is shutting down or not ready."""

    status = "UNAVAILABLE"


class OutOfRange(RecallError):
    """A sequence beyond anything this node has committed (e.g. min_seq above a primary's head)."""

    status = "OUT_OF_RANGE"


class DeadlineExceeded(RecallError):
    """Waited up to the deadline for a sequence that did not arrive."""

    status = "DEADLINE_EXCEEDED"


class Unauthenticated(RecallError):
    """The caller presented no credential where one is required, or a bad one."""

    status = "UNAUTHENTICATED"


class PermissionDenied(RecallError):
    """The caller is known but its role does not allow this call; the message names the role."""

    status = "PERMISSION_DENIED"


class StoreError(Exception):
    """The data directory cannot be used (locked, corrupt, foreign); fatal at start."""
