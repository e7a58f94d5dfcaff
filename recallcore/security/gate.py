"""The gate every adapter calls first: who is calling, may it do this, is it over its stream cap.

Transport-agnostic: an adapter passes the identity its TLS layer verified
(or ""), the `authorization` value it received (or ""), and the peer's
address. With no policy configured (loopback development), every caller is
admitted, as "anonymous" unless it identified itself.
"""

import contextlib
import threading
from collections.abc import Iterator

from ..core.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from .credentials import Credentials
from .identity import ANONYMOUS, Caller, bearer
from .policy import Policy
from .reloading import Reloading


class Gate:
    def __init__(self, policy: Reloading[Policy] | None = None, credentials: Reloading[Credentials] | None = None,
                 max_streams: int = 0) -> None:
        self.policy = policy
        self.credentials = credentials
        self.max_streams = max_streams  # concurrent Watch + AuditLog streams per identity (0: no cap)
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def enforcing(self) -> bool:
        return self.policy is not None

    def identify(self, cert_identity: str, authorization: str, peer: str) -> Caller:
        """The caller; raises Unauthenticated for a bad credential, or none where a policy applies."""
        identity = cert_identity
        if authorization:
            secret = bearer(authorization)
            if secret is None:
                raise Unauthenticated("authorization: expected \"Bearer <credential>\"")
            named = self.credentials.current().identify(secret) if self.credentials is not None else None
            if named is None:
                raise Unauthenticated("authorization: the bearer credential is not one this server knows")
            identity = identity or named
        if not identity:
            if self.enforcing:
                raise Unauthenticated(
                    "no client certificate or bearer credential: this server admits only callers its policy names"
                )
            identity = ANONYMOUS
        return Caller(identity, peer)

    def authorize(self, caller: Caller, role: str) -> None:
        """Raise PermissionDenied naming the role unless the policy grants it (no policy: allowed)."""
        if self.policy is not None and not self.policy.current().allows(caller.identity, role):
            raise PermissionDenied(
                f"{caller.identity} lacks the role {role!r} this call needs; grant it in the policy file"
            )

    def named(self, caller: Caller, role: str) -> bool:
        """True when a grant naming the caller itself gives it `role` (no policy: False)."""
        return self.policy is not None and self.policy.current().names(caller.identity, role)

    @contextlib.contextmanager
    def stream(self, caller: Caller, what: str) -> Iterator[None]:
        """Hold one of the caller's concurrent stream slots; ResourceExhausted past the cap.

        Without a policy every local caller is "anonymous", one identity:
        the cap applies where callers are told apart.
        """
        with self._lock:
            held = self._streams.get(caller.identity, 0)
            if self.max_streams and self.enforcing and held >= self.max_streams:
                raise ResourceExhausted(
                    f"{what}: {caller.identity} already holds {held} streams, the cap per identity "
                    f"(--max-streams-per-identity {self.max_streams})"
                )
            self._streams[caller.identity] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._streams[caller.identity] - 1
                if left:
                    self._streams[caller.identity] = left
                else:
                    del self._streams[caller.identity]
