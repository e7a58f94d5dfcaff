"""The server's engine: writes through the writer thread, reads from memory.

Theory of operation. `Engine` lives on the asyncio event loop. Writes are
validated here, queued to the writer thread and awaited; when a group
commits, the writer hands its deltas back to the loop, which applies them to
the in-memory mirror (`self.state`), tells the listeners (Watch fan-out),
and only then resolves the callers' futures. So a caller that hears "done"
can read its own write from this node, and a subscriber never sees a change
that is not durable.

Reads of the revocation state (`check`, `check_batch`, `stats`) are answered
from the mirror on the loop. Anything that needs a token record, the
(issuer, jti) index or a revocation's reason reads LMDB on a reader thread;
LMDB is never touched from the loop.
"""

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable

import numpy as np

from recallclient.jti import foreign_key
from recallclient.revoked_set import Delta
from recallclient.types import (
    CheckResult, JtiRef, RegisterResult, RevokeResult, Stats, TokenSpec, TokenState,
)

from . import validate
from .errors import DeadlineExceeded, RecallError, Unavailable
from .mirror import Mirror
from .model import Selector, Sweep
from .operations import now_seconds
from .settings import Settings
from .store import Store, Txn
from .writer import Writer

log = logging.getLogger(__name__)

Listener = Callable[[Delta], None]


class Engine:
    """One store, its writer thread and its in-memory mirror."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = now_seconds) -> None:
        self.settings = settings
        self.clock = clock
        self.store = Store(settings.data_dir, map_size=settings.map_size, max_map_size=settings.max_map_size)
        try:
            self.state: Mirror = self.store.load()
            self._writer = Writer(self.store, settings, clock, self._on_commit)
        except BaseException:
            self.store.close()
            raise
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recallcore-reader")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._seq_waiters: dict[int, list[asyncio.Future]] = {}
        self.listeners: list[Listener] = []
        self.closed = False

    @property
    def store_id(self) -> str:
        return self.store.store_id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the writer thread and the expiry sweeper."""
        self._loop = asyncio.get_running_loop()
        self._writer.start()
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
        self._reader.shutdown(wait=True)
        self.store.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except RecallError as exc:
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(self.settings.sweep_interval)

    # --------------------------------------------------------------- writes

    async def _submit(self, op):
        if self.closed or self._loop is None:
            raise Unavailable("server is shutting down")
        future = self._loop.create_future()
        self._writer.submit(op, future)
        return await future

    def _on_commit(self, deltas: list[Delta], outcomes: list) -> None:
        """Called on the writer thread after a commit (or a failed group)."""
        self._loop.call_soon_threadsafe(self._committed, deltas, outcomes)

    def _committed(self, deltas: list[Delta], outcomes: list) -> None:
        for delta in deltas:
            self.state.apply(delta)
            for listener in list(self.listeners):
                listener(delta)
        self._wake_seq_waiters()
        for future, outcome in outcomes:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def register(self, tokens: list[TokenSpec], actor: str = "") -> RegisterResult:
        """Register tokens; raises InvalidArgument / ResourceExhausted."""
        return await self._submit(validate.register(tokens, actor, self.settings, int(self.clock())))

    async def revoke(self, selector: Selector, reason: str = "", actor: str = "") -> RevokeResult:
        """Revoke what `selector` covers; raises InvalidArgument / ResourceExhausted."""
        return await self._submit(validate.revoke(selector, reason, actor, self.settings))

    async def sweep(self) -> int:
        """Run one expiry sweep now; returns the seq of its change or 0."""
        return await self._submit(Sweep())

    # ---------------------------------------------------------------- reads

    async def _read(self, fn: Callable[[Txn], object]):
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._in_txn, fn)

    def _in_txn(self, fn):
        with self.store.read() as txn:
            return fn(txn)

    async def wait_for_seq(self, seq: int, timeout: float | None) -> None:
        """Return once the mirror has applied `seq`; DeadlineExceeded after `timeout`."""
        if seq <= self.state.seq:
            return
        future = asyncio.get_running_loop().create_future()
        self._seq_waiters.setdefault(seq, []).append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"min_seq: this node is at seq {self.state.seq} and did not reach {seq} in time"
            ) from None

    def _wake_seq_waiters(self) -> None:
        for seq in [s for s in self._seq_waiters if s <= self.state.seq]:
            for future in self._seq_waiters.pop(seq):
                if not future.done():
                    future.set_result(None)

    async def _serial_of(self, ref: JtiRef) -> int:
        """The serial (issuer, jti) is registered under, or 0."""
        return await self._read(lambda txn: txn.serial_for(ref.issuer, ref.jti))

    async def check(self, ref: int | JtiRef) -> CheckResult:
        """The state of one token by serial or (issuer, jti)."""
        now = int(self.clock())
        serial = ref if isinstance(ref, int) else await self._serial_of(ref)
        if serial:
            state = self.state.state(serial, now)
            seq = self.state.seq
            if state != TokenState.REVOKED:
                return CheckResult(state, serial, 0, "", seq)
            revoked_at, reason = await self._read(lambda txn: _why_revoked(txn, serial))
            return CheckResult(state, serial, revoked_at, reason, seq)
        key = foreign_key(ref.issuer, ref.jti)
        if not self.state.revocations.is_foreign_revoked(key):
            return CheckResult(TokenState.UNKNOWN, 0, 0, "", self.state.seq)
        revoked_at, reason = await self._read(lambda txn: _why_foreign(txn, key))
        return CheckResult(TokenState.REVOKED, 0, revoked_at, reason, self.state.seq)

    def check_packed(self, packed: bytes) -> bytes:
        """One TokenState byte per little-endian uint64 serial in `packed`.

        Raises InvalidArgument naming the first serial that is 0 or too large.
        """
        ids = np.frombuffer(validate.packed_serials(packed, self.settings), dtype=np.uint64)
        bad = (ids == 0) | (ids > validate.MAX_SERIAL)
        if bad.any():
            first = int(np.argmax(bad))
            validate.serial(int(ids[first]), f"serials[{first}]")
        return self.state.states(ids, int(self.clock()))

    async def check_refs(self, refs: list[JtiRef]) -> list[TokenState]:
        """States of tokens by (issuer, jti), in order."""
        if not refs:
            return []
        serials = await self._read(lambda txn: [txn.serial_for(r.issuer, r.jti) for r in refs])
        now = int(self.clock())
        return [
            self.state.state(serial, now) if serial
            else TokenState.REVOKED if self.state.revocations.is_foreign_revoked(foreign_key(r.issuer, r.jti))
            else TokenState.UNKNOWN
            for serial, r in zip(serials, refs)
        ]

    async def introspect(self, ref: int | JtiRef) -> dict:
        """RFC 7662 fields plus the recall fields, for a token by serial or (issuer, jti)."""
        now = int(self.clock())

        def read(txn: Txn) -> dict:
            serial = ref if isinstance(ref, int) else txn.serial_for(ref.issuer, ref.jti)
            if not serial:
                key = foreign_key(ref.issuer, ref.jti)
                found = txn.foreign(key)
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
        serial = out.get("serial", 0)
        if serial:
            state = self.state.state(serial, now)
        elif self.state.revocations.is_foreign_revoked(foreign_key(ref.issuer, ref.jti)):
            state = TokenState.REVOKED
        else:
            state = TokenState.UNKNOWN
        out["state"] = state
        out["active"] = state == TokenState.ACTIVE
        return out

    async def stats(self) -> Stats:
        """Counts of the mirror and sizes of the store."""
        data_bytes, map_bytes = await asyncio.get_running_loop().run_in_executor(self._reader, self.store.sizes)
        revocations = self.state.revocations
        revoked, expired, active = self.state.counts(int(self.clock()))
        return Stats(
            registered=revocations.registered_through,
            revoked=revoked,
            active=active,
            expired=expired,
            foreign_revoked=len(revocations.foreign),
            seq=revocations.seq,
            store_id=self.store_id,
            data_bytes=data_bytes,
            map_bytes=map_bytes,
        )


def _change_info(txn: Txn, seq: int) -> dict:
    audit = txn.audit(seq) or {}
    return {
        "revoked_at": audit.get("time", 0),
        "reason": audit.get("reason", ""),
        "actor": audit.get("actor", ""),
    }


def _why_revoked(txn: Txn, serial: int) -> tuple[int, str]:
    info = _change_info(txn, txn.revoked_by(serial))
    return info["revoked_at"], info["reason"]


def _why_foreign(txn: Txn, key: int) -> tuple[int, str]:
    found = txn.foreign(key)
    info = _change_info(txn, found[1]) if found else {"revoked_at": 0, "reason": ""}
    return info["revoked_at"], info["reason"]
