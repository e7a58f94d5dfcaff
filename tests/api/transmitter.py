"""A Shared Signals transmitter for the receiver tests: its keys, its JWKS file, and SETs it signs."""

import http.server
import itertools
import json
import pathlib
import ssl
import threading
import time

from joserfc import jws

from recallcore.core.signals import CAEP

from ..security.certs import CA
from .issuer import Issuer

TRANSMITTER = "https://idp.example"
AUDIENCE = "https://recall.example"
SESSION_REVOKED = CAEP + "session-revoked"


class Transmitter(Issuer):
    """Signs SETs as `name` with an EC key (kid "t1"); `jwks` is the file of its public keys
    (publish and rotate as for an Issuer of tokens)."""

    def __init__(self, root: pathlib.Path, name: str = TRANSMITTER, kid: str = "t1") -> None:
        super().__init__(root, name, kid)
        self._jtis = itertools.count(1)

    def claims(self, event: str = SESSION_REVOKED, subject: str = "alice", payload: dict | None = None,
               **extra) -> dict:
        return {"iss": self.name, "aud": AUDIENCE, "iat": int(time.time()), "jti": f"set-{next(self._jtis)}",
                "sub_id": {"format": "iss_sub", "iss": self.name, "sub": subject},
                "events": {event: payload if payload is not None else {}}, **extra}

    def sign(self, claims: dict, key=None, header: dict | None = None) -> str:
        header = {"alg": "ES256", "kid": self.kid, "typ": "secevent+jwt", **(header or {})}
        return jws.serialize_compact(header, json.dumps(claims).encode(), key or self.keys[self.kid])

    def set(self, event: str = SESSION_REVOKED, subject: str = "alice", **extra) -> str:
        """A signed SET of `event` about `subject` (its jti: set-1, set-2, ...)."""
        return self.sign(self.claims(event, subject, **extra))


def serve_https(address: str, ca: CA, name: str, handler: type[http.server.BaseHTTPRequestHandler]):
    """A threading https server of `handler` on `address` (a certificate of `ca` named `name`), serving."""
    leaf = ca.server(name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert, leaf.key)
    host, port = address.split(":")
    httpd = http.server.ThreadingHTTPServer((host, int(port)), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, name=f"test-{name}", daemon=True).start()
    return httpd


class HttpsPeer:
    """A test peer served over https on `address` once `start` (its subclass's) runs."""

    def __init__(self, address: str, ca: CA) -> None:
        self.address, self.ca, self.httpd = address, ca, None

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
