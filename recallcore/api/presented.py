"""Recalled tokens presented again: the security signal of a stolen token in use, or of a client never told.

Theory of operation. Every adapter that finds a token REVOKED or ROTATED
(Check, CheckBatch by reference, the HTTP edge, ext_authz) calls `saw`,
which only counts in memory: the answer is never delayed by it. Every
`every` seconds the monitor looks up why each token was recalled (the
reason, through the node's cache), adds the presentations to
recall_recalled_token_presented_total by the token's client and that
reason, and, on a primary, writes one `presented_after_recall` audit record
listing each token with its client, who presented it, first and last time
and count. A burst is bounded: at most MAX_TOKENS tokens are tracked
between flushes; the presentations of others are counted as `dropped`.
Followers count; their trail is the primary's. With a webhook, each
flushed token is also POSTed to it as JSON (api/webhook.py).
"""

import asyncio
import logging
import time

from recallclient.jti import foreign_key

from ..core.errors import RecallError

log = logging.getLogger(__name__)

MAX_TOKENS = 256  # tokens tracked between two flushes (one audit record lists them)


class Presented:
    """Presentations of recalled tokens since the last flush."""

    def __init__(self, node, metrics, every: float, webhook=None) -> None:
        """`webhook`: an api.webhook.Webhook each flushed token is also sent to, or None."""
        self.node = node
        self.metrics = metrics
        self.every = every
        self.webhook = webhook
        self._pending: dict[tuple, dict] = {}
        self._dropped = 0
        self._task: asyncio.Task | None = None

    def saw(self, serial: int, issuer: str, jti: str, client: str, presented_by: str) -> None:
        """A recalled token was presented (O(1); called on the answer path)."""
        key = (serial,) if serial else (issuer, jti)
        entry = self._pending.get(key)
        now = int(time.time())
        if entry is None:
            if len(self._pending) >= MAX_TOKENS:
                self._dropped += 1
                return
            entry = self._pending[key] = {"serial": serial, "iss": issuer, "jti": jti, "client": client,
                                          "presented_by": presented_by, "first": now, "last": now, "count": 0}
        entry["last"], entry["presented_by"] = now, presented_by or entry["presented_by"]
        entry["count"] += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recallcore-presented")
        if self.webhook is not None:
            self.webhook.start()

    async def stop(self) -> None:
        """End the flushes, and flush what is left (a failure is logged: the server stops anyway)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except RecallError as exc:
            log.warning("presented_after_recall not recorded at shutdown: %s", exc)
        if self.webhook is not None:
            await self.webhook.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.flush()
            except RecallError as exc:
                log.warning("presented_after_recall not recorded: %s", exc)

    async def flush(self) -> None:
        """Count and record what was seen since the last flush."""
        pending, dropped = list(self._pending.values()), self._dropped
        self._pending, self._dropped = {}, 0
        if not pending and not dropped:
            return
        for entry in pending:
            key = 0 if entry["serial"] else foreign_key(entry["iss"], entry["jti"])
            try:
                entry["reason"] = (await self.node._why_revoked(entry["serial"], key))[1] or "unknown"
            except RecallError:
                entry["reason"] = "unknown"
            if entry["serial"] and not entry["client"]:  # a check by serial: the registry knows whose it is
                try:
                    entry["client"] = (await self.node.introspect(entry["serial"])).get("client_id", "")
                except RecallError:
                    pass
            self.metrics.recalled(entry["client"], entry["reason"], entry["count"])
            if self.webhook is not None:
                self.webhook.send({"type": "presented_after_recall", **entry})
        if dropped:
            self.metrics.recalled("other", "other", dropped)
        if hasattr(self.node, "note_presented") and not getattr(self.node, "closed", False):
            await self.node.note_presented(pending, dropped)
