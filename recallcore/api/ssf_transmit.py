"""Transmitting CAEP session-revoked SETs to relying parties: push (RFC 8935) and poll (RFC 8936).

Theory of operation. The outbox is the audit trail: every change is
committed with its audit record before anyone hears of it, in seq order, so
the SETs a change calls for (core/signals.outgoing: a revocation by subject,
a subject's cut-off) are already durable and ordered when it commits. Each
receiver owns only a durable cursor (storage: cursors), the seq up to which
it has taken them. A `Pusher` reads the records after its cursor a page at a
time, signs each SET when it sends it and POSTs it; only on 202 does the
cursor move past it (Engine.advance, committed), so a receiver that is down
gets every SET when it returns, in order, at least once — a SET sent again
after a crash carries the same jti. Failures back off as the poller's do
(ssf_poll.backoff). A poll receiver's cursor moves when it acknowledges: a
poll answers the SETs after its cursor, and an ack of the first n of them
moves the cursor past the n-th. Audit records past audit_retention are
gone, and with them SETs a receiver never took.
"""

import asyncio
import json
import logging
import pathlib
import ssl

import aiohttp
from joserfc import jws

from ..core.audit import PAGE, AuditQuery
from ..core.errors import RecallError
from ..core.signals import outgoing
from ..settings import Downstream, Settings
from .ssf_poll import Background, backoff

log = logging.getLogger(__name__)

IDLE_WAIT = 5.0  # seconds a pusher waits for a change before looking again anyway
SKIP_PERSIST = 4096  # changes that call for no SET passed over before the cursor is moved past them


class Signer:
    """Signs SET claims with the transmitter's key; `jwks` is its public part."""

    def __init__(self, signing_key: tuple) -> None:
        """`signing_key` as status_lists.load_signing_key returns it."""
        self.key, self.alg, self.kid = signing_key
        self.jwks = {"keys": [{**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}]}
        self._registry = jws.JWSRegistry(algorithms=[self.alg])

    def sign(self, claims: dict) -> str:
        header = {"alg": self.alg, "kid": self.kid, "typ": "secevent+jwt"}
        return jws.serialize_compact(header, json.dumps(claims, separators=(",", ":")).encode(), self.key,
                                     registry=self._registry)


class Outbox:
    """The SETs of one receiver, read from the audit trail after a seq."""

    def __init__(self, engine, downstream: Downstream, signer: Signer, issuer: str) -> None:
        self.engine, self.downstream, self.signer, self.issuer = engine, downstream, signer, issuer

    @property
    def name(self) -> str:
        return self.downstream.stream

    async def after(self, seq: int, limit: int) -> tuple[list[tuple[int, str, str]], int]:
        """([(seq, jti, SET)] of up to `limit` changes after `seq`, the last seq looked at).

        Records that call for no SET are passed over (the seq looked at moves past them).
        """
        out: list[tuple[int, str, str]] = []
        looked = seq
        while len(out) < limit:
            records = await self.engine.audit(AuditQuery(after_seq=looked, limit=PAGE))
            if not records:
                break
            for record in records:
                claims = outgoing(record, self.issuer, self.downstream.audience, self.engine.store_id)
                if claims is not None:
                    if len(out) == limit:
                        return out, looked
                    out.append((record["seq"], claims["jti"], self.signer.sign(claims)))
                looked = record["seq"]
        return out, looked


class Pusher(Background):
    """Pushes a receiver's SETs in order, moving its cursor only past what it answered 202."""

    def __init__(self, outbox: Outbox, settings: Settings) -> None:
        super().__init__(f"recallcore-ssf-push-{outbox.name}", outbox.downstream.cacert)
        self.outbox, self.settings = outbox, settings
        self.url = outbox.downstream.push
        self.state = {"url": self.url, "cursor": 0, "sent": 0, "failures": 0, "last_error": ""}

    async def _run(self) -> None:
        engine = self.outbox.engine
        cursor = looked = self.state["cursor"] = await engine.cursor(self.outbox.name)
        failures = 0
        while True:
            try:
                batch, scanned = await self.outbox.after(looked, PAGE)
                for seq, jti, token in batch:
                    await self._push(jti, token)
                    cursor = self.state["cursor"] = await engine.advance(self.outbox.name, seq)
                    self.state["sent"] += 1
                looked = max(scanned, cursor)
                # Past records that call for no SET the cursor moves durably only now and then:
                # not one more commit for every commit of others (a restart reads them again).
                if looked - cursor >= SKIP_PERSIST:
                    cursor = self.state["cursor"] = await engine.advance(self.outbox.name, looked)
                failures = 0
                self.state["failures"] = 0
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, RecallError, PushRefused) as exc:
                looked = cursor  # from the SET that failed, again
                failures += 1
                self.state.update(failures=failures, last_error=f"{exc}")
                (log.warning if failures == 1 else log.debug)("ssf push to %s: %s", self.url, exc)
                await asyncio.sleep(backoff(failures, self.settings.ssf_poll_interval, self.settings.ssf_poll_backoff))
                continue
            if not batch:
                await engine.changed(looked, IDLE_WAIT)

    async def _push(self, jti: str, token: str) -> None:
        headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
        path = self.outbox.downstream.push_token_file
        if path:
            headers["Authorization"] = "Bearer " + pathlib.Path(path).read_text().strip()
        async with self.session.post(self.url, data=token, headers=headers) as response:
            if response.status in (200, 202):
                return
            body = (await response.content.read(4096)).decode(errors="replace")
            if response.status == 400 and '"err"' in body:
                # The receiver will never take this SET: it is logged and passed over, not sent forever.
                log.error("ssf push to %s: SET %s refused for good: %s", self.url, jti, body)
                return
            raise PushRefused(f"HTTP {response.status} for SET {jti}: {body[:200]}")


class PushRefused(Exception):
    """A push answered with a status that asks to send it again later."""


class PollStream:
    """What a polling receiver is served (RFC 8936): the SETs after its cursor."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def poll(self, acks: list[str], limit: int) -> tuple[dict[str, str], bool]:
        """Take `acks`, then answer (jti -> SET of up to `limit`, more available)."""
        engine = self.outbox.engine
        cursor = await engine.cursor(self.outbox.name)
        if acks:
            # The SETs after the cursor, in order: the cursor moves past each acknowledged one in turn.
            sent, _ = await self.outbox.after(cursor, max(len(acks), 1))
            acked = set(acks)
            moved = cursor
            for seq, jti, _ in sent:
                if jti not in acked:
                    break
                moved = seq
            if moved > cursor:
                cursor = await engine.advance(self.outbox.name, moved)
        batch, looked = await self.outbox.after(cursor, limit + 1)
        more = len(batch) > limit
        return {jti: token for _, jti, token in batch[:limit]}, more


class Transmission:
    """The transmitter side of one primary: its signer, a Pusher per push receiver, a PollStream per poll one."""

    def __init__(self, engine, settings: Settings, signing_key: tuple) -> None:
        self.signer = Signer(signing_key)
        self.issuer = settings.ssf_issuer or settings.issuer
        self.pushers: dict[str, Pusher] = {}
        self.polls: dict[str, PollStream] = {}
        self.downstreams = {d.stream: d for d in settings.downstreams}
        for downstream in settings.downstreams:
            outbox = Outbox(engine, downstream, self.signer, self.issuer)
            if downstream.push:
                self.pushers[downstream.stream] = Pusher(outbox, settings)
            else:
                self.polls[downstream.stream] = PollStream(outbox)

    def start(self) -> None:
        for pusher in self.pushers.values():
            pusher.start()

    async def stop(self) -> None:
        for pusher in self.pushers.values():
            await pusher.stop()
