"""A Shared Signals transmitter for the receiver tests: its keys, its JWKS file, and SETs it signs."""

import itertools
import json
import pathlib
import time

from joserfc import jws

from recallcore.core.signals import CAEP

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
