"""Channels to a recallcore server: plaintext or TLS, with a client certificate or a bearer credential.

`Transport` holds the material (paths of PEM files, a bearer secret) and
opens blocking or asyncio channels with it. The bearer credential travels
as `authorization: Bearer <secret>` metadata on every call (an interceptor
adds it), over TLS or, on loopback, in the clear.
"""

import dataclasses
import os
import pathlib

import grpc

CACERT_ENV, CERT_ENV, KEY_ENV, TOKEN_ENV = "RECALL_CACERT", "RECALL_CERT", "RECALL_KEY", "RECALL_TOKEN"


def _read(path: str | os.PathLike | None) -> bytes | None:
    return pathlib.Path(path).read_bytes() if path else None


@dataclasses.dataclass(frozen=True)
class Transport:
    """cacert: CA bundle that signed the server's certificate (TLS when set);
    cert, key: this client's certificate and key (mutual TLS); token: a
    bearer credential's secret. Raises ValueError for cert without key."""

    cacert: str | os.PathLike | None = None
    cert: str | os.PathLike | None = None
    key: str | os.PathLike | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key: give both, or neither")
        if self.cert and not self.cacert:
            raise ValueError("cert: a client certificate needs cacert (TLS)")

    @classmethod
    def from_environment(cls, **given) -> "Transport":
        """The material given, else from RECALL_CACERT, RECALL_CERT, RECALL_KEY, RECALL_TOKEN."""
        env = {"cacert": CACERT_ENV, "cert": CERT_ENV, "key": KEY_ENV, "token": TOKEN_ENV}
        return cls(**{name: given.get(name) or os.environ.get(var) or None for name, var in env.items()})

    @property
    def tls(self) -> bool:
        return bool(self.cacert)

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.cacert), _read(self.key), _read(self.cert))

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str, options=()) -> grpc.Channel:
        """A blocking channel to `target`."""
        options = list(options)
        raw = grpc.secure_channel(target, self._credentials(), options) if self.tls else \
            grpc.insecure_channel(target, options)
        metadata = self._metadata()
        return grpc.intercept_channel(raw, _Metadata(metadata)) if metadata else raw

    def aio_channel(self, target: str, options=()) -> grpc.aio.Channel:
        """An asyncio channel to `target`."""
        options = list(options)
        metadata = self._metadata()
        interceptors = [_AioUnary(metadata), _AioStream(metadata)] if metadata else None
        if self.tls:
            return grpc.aio.secure_channel(target, self._credentials(), options, interceptors=interceptors)
        return grpc.aio.insecure_channel(target, options, interceptors=interceptors)


def _with(details, metadata):
    return details._replace(metadata=tuple(details.metadata or ()) + metadata)


class _Details(grpc.ClientCallDetails):
    pass


def _sync_details(details, metadata):
    out = _Details()
    out.method, out.timeout, out.credentials = details.method, details.timeout, details.credentials
    out.wait_for_ready, out.compression = details.wait_for_ready, details.compression
    out.metadata = tuple(details.metadata or ()) + metadata
    return out


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, metadata) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_sync_details(details, self.metadata), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_sync_details(details, self.metadata), request)


class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with(details, self.metadata), request)


class _AioStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with(details, self.metadata), request)
