"""The primary: writes through the writer thread, reads from memory.

Theory of operation. `Engine` lives on the asyncio event loop. Writes are
validated here, queued to the writer thread and awaited; when a group
commits, the writer hands its deltas back to the loop, which applies them to
the in-memory mirror, publishes them to Watch streams (see replication/node.py
and replication/hub.py), and only then resolves the callers' futures. So a caller that hears
"done" can read its own write from this node, and a subscriber never sees a
change that is not durable.

Anything that needs a token record, the (issuer, jti) index, a revocation's
reason or the stored change log reads the store (any engine behind
recallcore.storage.base) on a reader thread; the store is never touched from
the loop. Audit queries have a reader thread of their own, so that reading
the trail never delays a Check; AuditLog follow streams share one read per
commit (replication/audit_feed.py).

On a store several nodes share (PostgreSQL), the store's log tail
(storage/pg_tail.py) reads the changes other nodes committed from the log,
and the loop applies every change in sequence order. A commit of this
node's own writer is applied by the loop itself as soon as the mirror
stands where it began (at once, unless the tail still has other nodes'
changes before it to bring): those are exactly the changes the tail would
read back, so the writer hands them to the tail (LogTail.adopt), which moves
past them without reading. Its writes are answered once applied here, so a
caller reads its own write from this node; a `min_seq` above this node's
head waits for the tail (another node may have acknowledged it). When the
database is unreachable the node goes on answering reads from memory, its
staleness (Stats) grows, and once its tail has not read the log for longer
than a receiver would count a vouch (heartbeat_interval + freshness_skew)
it stops vouching: no more heartbeats, new Watch streams refused
UNAVAILABLE naming the database. Its followers and replicas
then go stale by their own max_staleness and fail closed; they are vouched
for again once the tail reads the log.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

from recallclient.jti import foreign_key
from recallclient.revoked_set import SUBJECT, Delta
from recallclient.types import JtiRef, RegisterResult, RevokeResult, TokenSpec, TokenState

from .core import audit, validate
from .core.audit import AuditQuery
from .core.errors import OutOfRange, RecallError, Unavailable
from .core.model import Advance, CutoffResult, Presented, RotateResult, Selector, Signal, SignalResult, Sweep
from .core.operations import now_seconds
from .core.signals import Recall
from .replication.audit_feed import AuditFeed
from .replication.node import Node
from .security.identity import Caller
from .settings import Settings
from .storage import open_store
from .storage.base import ReadTxn, Store
from .storage.writer import Writer

log = logging.getLogger(__name__)

WHY_CACHE = 4096  # recent (revoked_at, reason) answers kept in memory
AHEAD_WAIT = 5.0  # seconds a subscriber ahead of a cluster node waits for the node's tail
OFF_LOOP = 1000  # items in one request past which converting and checking it runs on a worker thread


async def off_loop(size: int, fn: Callable, *args):
    """fn(*args); on a worker thread when `size` items would hold the event loop too long.

    (100,000 tokens take seconds to check; on a thread the loop keeps
    answering Check between its GIL turns.)
    """
    if size <= OFF_LOOP:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class Engine(Node):
    """The primary node: one store, its writer thread and its in-memory mirror."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = now_seconds,
                 store: Store | None = None) -> None:
        """Open the store `settings` name, or serve `store` (opened already; closed with the engine)."""
        store = store if store is not None else open_store(settings)
        try:
            super().__init__(settings, store.load(), clock)
            self._writer = Writer(store, self.state.copy(), settings, clock, self._on_commit)
        except BaseException:
            store.close()
            raise
        self.store = store
        self._tail = store.tail(self.state.seq, self.state.revocations.history, self._tailed, self._reload,
                                settings.heartbeat_interval)
        self._awaiting: list[tuple[list[Delta], list]] = []  # (deltas, outcomes) of own commits not applied yet
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recallcore-reader")
        self._audit_reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recallcore-audit")
        self.audit_feed = AuditFeed(self._audit_records)
        self.audit_feed.start_at(self.state.seq)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._why_cache: dict[int, tuple[int, str]] = {}
        self.closed = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the writer thread and the expiry sweeper."""
        self._loop = asyncio.get_running_loop()
        self._writer.start()
        if self._tail is not None:
            self._tail.start()
        self.synced.set()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="recallcore-sweeper")

    async def close(self) -> None:
        """Finish queued writes, stop the threads, close the store."""
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)
        # Outcomes of the last group were scheduled on the loop; let them run.
        await asyncio.sleep(0)
        if self._tail is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._tail.stop)
            for _, outcomes in self._awaiting:  # committed: answer them, though this node will not apply them
                self._answer(outcomes)
            self._awaiting.clear()
        self.audit_feed.close()
        self._reader.shutdown(wait=True)
        self._audit_reader.shutdown(wait=True)
        self.store.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except RecallError as exc:
                log.warning("sweep failed: %s", exc)
            except Exception:  # a full disk, a database error: the next sweep tries again
                log.exception("sweep failed")
            await asyncio.sleep(self.settings.sweep_interval)

    def staleness(self) -> float:
        return self._tail.staleness() if self._tail is not None else 0.0

    def vouch_time_us(self) -> int:
        # On a shared store: when the tail last read the newest committed change.
        if self._tail is None:
            return self.wall_ns() // 1000
        return self._tail.confirmed if self.vouching() else 0

    def vouching(self) -> bool:
        # On a shared store, only while the tail reads the log (at least every heartbeat
        # interval): a receiver counts a vouch at most heartbeat_interval + its clock skew old,
        # so past that the node stops sending vouches a receiver could only reject as late.
        if self._tail is None:
            return True
        return self._tail.staleness() <= self.settings.heartbeat_interval + self.settings.freshness_skew

    def require_vouching(self) -> None:
        if not self.vouching():
            raise Unavailable(f"this node has not read the change log of {self.store.where} for "
                              f"{self.staleness():.1f} s (the database is unreachable); retry, or ask another node")

    def require_ready(self) -> None:
        """A primary on a store of its own answers from memory: it is the store's only writer.

        A cluster node answers while its tail reads the shared log within
        max_staleness. Past that it refuses, as a stale follower does: other
        nodes may have committed revocations it has not read (from here, a
        partition looks like an outage), and a node that cannot vouch for
        its state must not answer ACTIVE.
        """
        if self._tail is not None and (stale := self._tail.staleness()) > self.settings.max_staleness:
            raise Unavailable(
                f"this node has not read the change log of {self.store.where} for {stale:.1f} s "
                f"(max_staleness {self.settings.max_staleness:g} s): revocations made on other nodes may be "
                "missing here; ask another node or retry"
            )

    def answering(self) -> bool:
        return self._tail is None or self._tail.staleness() <= self.settings.max_staleness

    @property
    def ahead_wait(self) -> float:
        # On a shared store another node may be a little ahead of this one: a subscriber that
        # moved here from it waits for the tail rather than being reset.
        return AHEAD_WAIT if self._tail is not None else 0.0

    def _refuse_unknown_seq(self, seq: int) -> None:
        if self._tail is not None:  # another node may have acknowledged it: wait for the tail
            self._tail.wake()
            return
        # Every write is applied here before it is acknowledged: a seq above
        # the head was never given to anyone by this store.
        raise OutOfRange(
            f"min_seq: {seq} is beyond this primary's newest change (seq {self.state.seq}); "
            "no write of this store was acknowledged with it"
        )

    # --------------------------------------------------------------- writes

    async def _submit(self, op):
        if self.closed or self._loop is None:
            raise Unavailable("server is shutting down")
        future = self._loop.create_future()
        self._writer.submit(op, future)
        return await future

    def _on_commit(self, deltas: list[Delta], outcomes: list) -> None:
        """Called on the writer thread after a commit (or a failed group)."""
        if self._tail is not None and deltas:  # before the tail could read them back: it need not
            self._tail.adopt(deltas[0].prev_seq, deltas[-1].seq, deltas[-1].history)
        self._loop.call_soon_threadsafe(self._committed, deltas, outcomes)

    def _committed(self, deltas: list[Delta], outcomes: list) -> None:
        if self._tail is None:
            self._applied(deltas)
            if deltas:
                self.audit_feed.committed(self.state.seq)
            self._answer(outcomes)
            return
        # This node's own commit: the loop applies it itself once the mirror stands where it
        # began (at once, unless the tail has other nodes' changes before it to bring); the
        # tail adopted it and does not deliver it (it may have read it first: then it is
        # skipped here).
        self._awaiting.append((deltas, outcomes))
        self._answer_applied()
        if self._awaiting:
            self._tail.wake()

    def _tailed(self, deltas: list[Delta]) -> None:
        """Called on the tail's thread with changes read from the shared log."""
        self._loop.call_soon_threadsafe(self._from_log, deltas)

    def _from_log(self, deltas: list[Delta]) -> None:
        self._applied(deltas)
        self.audit_feed.committed(self.state.seq)
        self._answer_applied()

    def _reload(self) -> tuple[int, bytes]:
        """Called on the tail's thread when the changes it missed were compacted: a fresh mirror."""
        state = self.store.load()
        self._loop.call_soon_threadsafe(self._reloaded, state)
        return state.seq, state.revocations.history

    def _reloaded(self, state) -> None:
        self._installed(state)
        self.audit_feed.committed(self.state.seq)
        self._answer_applied()

    def _answer_applied(self) -> None:
        """Apply the awaited own commits that follow on the mirror, in order, then answer every
        awaited write the mirror holds."""
        while True:
            follows = next((deltas for deltas, _ in self._awaiting
                            if deltas and deltas[0].prev_seq <= self.state.seq < deltas[-1].seq), None)
            if follows is None:
                break
            self._applied(follows)  # the part the mirror holds already is skipped
            self.audit_feed.committed(self.state.seq)
        waiting = []
        for deltas, outcomes in self._awaiting:
            if deltas and deltas[-1].seq > self.state.seq:
                waiting.append((deltas, outcomes))
            else:
                self._answer(outcomes)
        self._awaiting = waiting

    @staticmethod
    def _answer(outcomes: list) -> None:
        for future, outcome in outcomes:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _submit_as(self, op, caller: Caller | None):
        """Submit `op` as `caller`: the actor its audit record names is the authenticated
        identity, and the actor the request gave becomes on_behalf_of (None: trusted code in
        this process, whose actor stands)."""
        if caller is not None:
            op = dataclasses.replace(op, actor=caller.identity, on_behalf_of=op.actor, peer=caller.peer)
        return await self._submit(op)

    async def register(self, tokens: list[TokenSpec], actor: str = "", *, caller: Caller | None = None) -> RegisterResult:
        """Register tokens; raises InvalidArgument / ResourceExhausted."""
        op = await off_loop(len(tokens), validate.register, tokens, actor, self.settings, int(self.clock()))
        return await self._submit_as(op, caller)

    async def revoke(self, selector: Selector, reason: str = "", actor: str = "", origin: str = "", *,
                     caller: Caller | None = None) -> RevokeResult:
        """Revoke what `selector` covers; raises InvalidArgument / ResourceExhausted."""
        size = len(selector.serials) + len(selector.tokens)
        op = await off_loop(size, validate.revoke, selector, reason, actor, self.settings, int(self.clock()), origin)
        return await self._submit_as(op, caller)

    async def rotate(self, ref: int | JtiRef, successor: TokenSpec, actor: str = "", origin: str = "",
                     request_id: str = "", *, caller: Caller | None = None) -> RotateResult:
        """Rotate a refresh token (see core/lifecycle.py); raises InvalidArgument."""
        return await self._submit_as(validate.rotate(ref, successor, actor, origin, request_id, self.settings), caller)

    async def cutoff(self, scope: int, value: str, before: int, reason: str = "", actor: str = "", *,
                     caller: Caller | None = None) -> CutoffResult:
        """Add a cut-off rule; raises InvalidArgument."""
        return await self._submit_as(
            validate.cutoff(scope, value, before, reason, actor, self.settings, int(self.clock())), caller
        )

    async def signal(self, issuer: str, jti: str, recall: Recall, fields: dict, *, issued_at: int = 0,
                     caller: Caller | None = None) -> SignalResult:
        """Apply a verified Security Event Token (issuer, jti) once: its `recall`, with `fields`
        (transmitter, issuer, jti, event) in the audit record; `issued_at` is its iat (it is
        remembered until ssf_max_age after it). Durable when it returns; a SET applied before
        changes nothing. Raises InvalidArgument / ResourceExhausted."""
        now = int(self.clock())
        reason = f"{recall.short_event} signalled by {fields.get('transmitter', issuer)}"
        if recall.subject:
            action = validate.cutoff(SUBJECT, recall.subject, recall.before, reason, "", self.settings, now)
        elif recall.token is not None:
            action = validate.revoke(Selector(tokens=(recall.token,)), reason, "", self.settings, now, "ssf")
        else:
            action = None
        if action is not None:
            action = dataclasses.replace(action, signal=tuple(fields.items()))
            if caller is not None:
                action = dataclasses.replace(action, actor=caller.identity, peer=caller.peer)
        return await self._submit(Signal(issuer, jti, action, issued_at))

    async def cursor(self, name: str) -> int:
        """How far SSF receiver `name` has taken the events of changes (a seq; 0: none)."""
        return await self._read(lambda txn: txn.cursor(name))

    async def advance(self, name: str, seq: int) -> int:
        """Move receiver `name`'s cursor up to `seq`, durably; returns it."""
        return await self._submit(Advance(name, seq))

    async def audit_pages(self, q: AuditQuery, upto: int) -> AsyncIterator[list[dict]]:
        """The records matching `q` up to seq `upto`, oldest first, a page (audit.PAGE) at a time.

        A token's trace (q.serial) comes as one page.
        """
        if q.serial:
            now = int(self.clock())
            yield await self._audit_read(lambda txn: audit.trace(txn, q, now))
            return
        after = q.after_seq
        while after < upto:
            records, after = await self._audit_read(
                lambda txn, after=after: audit.page(txn, q, after, upto, audit.PAGE))
            if records:
                yield records

    async def audit(self, q: AuditQuery) -> list[dict]:
        """Every record matching `q` up to now, oldest first (at most q.limit; 0: all)."""
        out: list[dict] = []
        async for records in self.audit_pages(q, self.state.seq):
            out.extend(records)
            if q.limit and len(out) >= q.limit:
                break
        return out[: q.limit] if q.limit else out

    async def audit_follows(self, q: AuditQuery, records: list[dict]) -> list[dict]:
        """Those of new `records` that match `q` (subject, client or trace filters read the store)."""
        return await self._audit_read(lambda txn: audit.follows(txn, q, records))

    async def _audit_records(self, after: int, upto: int) -> list[dict]:
        def read(txn: ReadTxn) -> list[dict]:
            out = []
            for record in txn.audit_after(after):
                if record["seq"] > upto:
                    break
                out.append(record)
            return out

        return await self._audit_read(read)

    async def _audit_read(self, fn: Callable[[ReadTxn], object]):
        return await asyncio.get_running_loop().run_in_executor(self._audit_reader, self._in_txn, fn)

    async def note_presented(self, tokens: list[dict], dropped: int = 0) -> int:
        """Record recalled tokens presented again in the audit trail; returns the seq of the record."""
        return await self._submit(Presented(tuple(tokens), dropped))

    async def sweep(self) -> int:
        """Run one expiry sweep and log compaction now; returns the seq of its change or 0."""
        return await self._submit(Sweep())

    # ---------------------------------------------------------------- reads

    async def _read(self, fn: Callable[[ReadTxn], object]):
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._in_txn, fn)

    def _in_txn(self, fn):
        with self.store.read() as txn:
            return fn(txn)

    async def _serials_of(self, refs: list[JtiRef]) -> list[int]:
        return await self._read(lambda txn: [txn.serial_for(r.issuer, r.jti) for r in refs])

    async def _why_revoked(self, serial: int, key: int) -> tuple[int, str]:
        # Why a serial was revoked never changes (once it expires, Check says
        # EXPIRED and does not ask), and a revoked token tends to be presented
        # again and again: remember recent answers so repeats skip the hop to
        # the reader thread. Foreign keys can expire and be revoked anew, so
        # they are always read.
        known = self._why_cache.get(serial) if serial else None
        if known is not None:
            return known

        def read(txn: ReadTxn) -> tuple[int, str]:
            if serial:
                seq = txn.revoked_by(serial)
            else:
                found = txn.foreign(key)
                seq = found[1] if found else 0
            info = _change_info(txn, seq)
            return info["revoked_at"], info["reason"]

        try:
            answer = await self._read(read)
        except Unavailable:
            # The store is unreachable: the mirror still says REVOKED; why and when, it cannot say now.
            return 0, ""
        if serial and answer[0]:
            if len(self._why_cache) >= WHY_CACHE:
                del self._why_cache[next(iter(self._why_cache))]
            self._why_cache[serial] = answer
        return answer

    async def history(self, after: int, limit: int) -> list[Delta] | None:
        from_ring = self.hub.since(after, limit)
        if from_ring is not None:
            return from_ring

        head = self.state.seq  # never past what the mirror (and so heartbeats) vouch for

        def read(txn: ReadTxn) -> list[Delta] | None:
            out = []
            for seq in range(after + 1, min(after + limit, head) + 1):
                delta = txn.delta(seq)
                if delta is None:
                    break
                out.append(delta)
            if after < self.state.seq and not out:
                return None
            return out

        return await self._read(read)

    async def oldest_resumable(self) -> int:
        first = await self._read(lambda txn: txn.log_first())
        return first - 1 if first else self.state.seq

    async def sizes(self) -> tuple[int, int, int, bool]:
        def read(unrevoked: int) -> tuple[int, int, int, bool]:
            try:
                used, mapped = self.store.sizes()
            except Unavailable:  # Stats still answers from memory, with the staleness
                return 0, 0, 0, False
            return used, mapped, self.store.limit(), bool(self.store.registrations_refused(unrevoked, 1))

        loop = asyncio.get_running_loop()
        sizes = await loop.run_in_executor(self._reader, read, self.state.unrevoked_at_most)
        if sizes[3]:  # by the quick bound: count the unexpired tokens (writer._refused does the same)
            sizes = await loop.run_in_executor(self._reader, read, self.state.unrevoked(int(self.clock())))
        return sizes

    async def introspect(self, ref: int | JtiRef) -> dict:
        """RFC 7662 fields plus the recall fields, for a token by serial or (issuer, jti).

        The token is resolved as Check resolves it, so both always agree.
        """
        serial = ref if isinstance(ref, int) else (await self._resolve([ref]))[0]

        def read(txn: ReadTxn) -> dict:
            if not serial:
                found = txn.foreign(foreign_key(ref.issuer, ref.jti))
                out = {"iss": ref.issuer, "jti": ref.jti}
                if found:
                    out.update(exp=found[0], **_change_info(txn, found[1]))
                return out
            out = {"serial": serial}
            record = txn.record(serial)
            if record is not None:
                out.update(
                    scope=" ".join(record.scopes), client_id=record.client_id,
                    username=record.subject, sub=record.subject,
                    token_type="refresh_token" if record.type == 2 else "access_token",
                    exp=record.expires_at, iat=record.issued_at, iss=record.issuer,
                    jti=record.jti, origin=record.origin, family=record.family,
                )
            seq = txn.revoked_by(serial)
            if seq:
                out.update(_change_info(txn, seq))
            return out

        out = await self._read(read)
        state = self.state.state(serial, int(self.clock())) if serial else self._unregistered_state(ref, None)
        out["state"] = state
        out["active"] = state == TokenState.ACTIVE
        return out

def _change_info(txn: ReadTxn, seq: int) -> dict:
    audit = txn.audit(seq) if seq else None
    audit = audit or {}
    return {
        "revoked_at": audit.get("time", 0),
        "reason": audit.get("reason", ""),
        "actor": audit.get("actor", ""),
    }
