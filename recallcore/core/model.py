"""Domain values of the server: selectors and the write operations.

Token specs, references and results are the client library's frozen
dataclasses (recallclient.types), so both sides speak the same values.
"""

import dataclasses

from recallclient.types import CutoffResult, JtiRef, RotateResult, TokenSpec  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class Selector:
    """What a revocation covers; the parts combine (union)."""

    serials: tuple[int, ...] = ()
    tokens: tuple[JtiRef, ...] = ()
    subject: str = ""
    client_id: str = ""
    family: str = ""

    @property
    def empty(self) -> bool:
        return not (self.serials or self.tokens or self.subject or self.client_id or self.family)

    def describe(self) -> dict:
        """A JSON-able summary for the audit record (ids only, never secrets)."""
        out: dict = {}
        if self.serials:
            out["serials"] = len(self.serials)
            out["serial_sample"] = list(self.serials[:16])
        if self.tokens:
            out["tokens"] = len(self.tokens)
        for name in ("subject", "client_id", "family"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


@dataclasses.dataclass(frozen=True)
class Claims:
    """Claims of a token never registered here, for cut-off rules (issued_at 0: unknown)."""

    sub: str = ""
    client_id: str = ""
    issued_at: int = 0


@dataclasses.dataclass(frozen=True)
class Register:
    """Register validated tokens (issuer, issued_at and expires_at filled in)."""

    tokens: tuple[TokenSpec, ...]
    actor: str = ""
    on_behalf_of: str = ""  # what the caller said it acts for; actor is who it proved to be
    peer: str = ""  # where the call came from


@dataclasses.dataclass(frozen=True)
class Revoke:
    selector: Selector
    reason: str = ""
    actor: str = ""
    origin: str = ""
    on_behalf_of: str = ""  # what the caller said it acts for; actor is who it proved to be
    peer: str = ""  # where the call came from
    signal: tuple[tuple[str, str], ...] = ()  # the Security Event Token that asked for it (audit fields)


@dataclasses.dataclass(frozen=True)
class Rotate:
    """Rotate the refresh token `ref` (a serial or a JtiRef) to a successor."""

    ref: int | JtiRef
    successor: TokenSpec
    actor: str = ""
    origin: str = ""
    request_id: str = ""
    on_behalf_of: str = ""  # what the caller said it acts for; actor is who it proved to be
    peer: str = ""  # where the call came from


@dataclasses.dataclass(frozen=True)
class Cutoff:
    """Revoke every token of (scope, value) issued before `before`."""

    scope: int
    value: str
    before: int
    reason: str = ""
    actor: str = ""
    on_behalf_of: str = ""  # what the caller said it acts for; actor is who it proved to be
    peer: str = ""  # where the call came from
    signal: tuple[tuple[str, str], ...] = ()  # the Security Event Token that asked for it (audit fields)


@dataclasses.dataclass(frozen=True)
class Signal:
    """Apply a verified Security Event Token once: its recall (None: an event that recalls
    nothing) and, in the same change, its (issuer, jti) as applied."""

    issuer: str
    jti: str
    action: "Revoke | Cutoff | None" = None
    issued_at: int = 0  # the SET's iat: it is remembered until ssf_max_age after it


@dataclasses.dataclass(frozen=True)
class SignalResult:
    """What applying a SET did: `duplicate` when it was applied before (and so did nothing
    now); `seq` of the change it made (or the store's head when it made none)."""

    seq: int
    count: int = 0
    duplicate: bool = False


@dataclasses.dataclass(frozen=True)
class Advance:
    """Move SSF receiver `name`'s cursor up to `seq` (never back); no change to the revoked set."""

    name: str
    seq: int


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Drop expired tokens from the revoked set; purge records past retention."""


@dataclasses.dataclass(frozen=True)
class Presented:
    """Recalled tokens that were presented again: what the trail's presented_after_recall records.

    Each entry: serial (0 for a foreign token), iss, jti, client, reason, presented_by
    (the caller that asked), first and last (Unix seconds), count.
    """

    tokens: tuple[dict, ...]
    dropped: int = 0  # presentations past the cap of one record
    actor: str = "recallcore"


Operation = Register | Revoke | Sweep | Rotate | Cutoff | Signal | Advance | Presented
