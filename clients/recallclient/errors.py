"""The one error the client library raises for a failed call.

Every RPC of `RecallClient` and `AsyncRecallClient` runs inside
`rpc_errors()`, which turns a `grpc.RpcError` (sync) or
`grpc.aio.AioRpcError` (asyncio) into a `RecallError` carrying the status
code and the server's message. Nothing else is caught here.
"""

import contextlib
from collections.abc import Iterator

import grpc


class RecallError(Exception):
    """A call the server (or the channel) answered with a non-OK status.

    Attributes: `code` (grpc.StatusCode), `code_name` (e.g.
    "INVALID_ARGUMENT") and `details` (the server's message).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.code_name = code.name
        self.details = details
        super().__init__(f"{self.code_name}: {details}")


def from_rpc_error(err: grpc.RpcError) -> RecallError:
    """Return the RecallError for a failed sync or asyncio call."""
    if isinstance(err, (grpc.Call, grpc.aio.AioRpcError)):
        return RecallError(err.code(), err.details() or "")
    return RecallError(grpc.StatusCode.UNKNOWN, str(err))


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Context manager that re-raises grpc.RpcError as RecallError.

    Works around both blocking calls and awaited asyncio calls.
    """
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err) from None
