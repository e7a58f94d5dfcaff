"""A real Engine (writer thread; LMDB in a fresh directory, or the in-memory store) against a plain model.

A Hypothesis rule-based state machine registers, revokes, sweeps, restarts
and moves a fake clock; after every step every serial's state, the batch
check, checks by (issuer, jti), the counts of Stats, the sequence number and
the chain of published deltas must agree with a model made of dicts and sets.

The model encodes these contracts, read from recallcore/core/operations.py,
recallcore/core/mirror.py and recallcore/replication/node.py:
- a serial is EXPIRED once now >= its expiry (purged serials count as expired
  long ago), else REVOKED if revoked, else ACTIVE; serials above the highest
  issued one are UNKNOWN;
- by (issuer, jti): the registered pair's serial; else REVOKED while the
  pair's key is in the foreign set; else the serial a canonical jti encodes
  (under any issuer); else UNKNOWN;
- register gives known (issuer, jti) pairs their serial, refuses a
  caller-chosen jti in the canonical form, and registers REVOKED a pair whose
  key was revoked before registration;
- revoke counts registered, unexpired, not-yet-revoked serials plus foreign
  (never registered) keys not yet revoked whose expiry (given, or now + the
  maximum token lifetime) is still ahead; serials not issued yet are ignored;
  revoking a known foreign key with a later expiry extends it (a change,
  count 0); a revoked token registered under a caller-chosen jti also puts
  its key in the foreign set, expiring with the token (not counted);
- a foreign key stays revoked (check says REVOKED) until a sweep runs at or
  after its expiry + clock_skew: the check itself does not look at the clock;
- a sweep drops serials expired clock_skew ago from the revoked set, forgets
  foreign keys due by then, and purges records that expired
  `audit_retention` ago (each bounded by `purge_batch`); it is one change
  when it does any of that;
- every change bumps seq by exactly one and publishes one delta; a no-op
  leaves seq alone; all of it survives a restart.
"""

import asyncio
import dataclasses
import shutil
import tempfile
from array import array

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from recallclient.jti import canonical_jti, foreign_key, looks_canonical, serial_from_jti
from recallclient.revoked_set import Delta
from recallclient.types import JtiRef, TokenSpec, TokenState

from recallcore.core.errors import InvalidArgument
from recallcore.core.model import Selector
from recallcore.engine import Engine
from recallcore.settings import DEFAULT_ISSUER, DEFAULT_MAX_TOKEN_LIFETIME, Settings
from recallcore.storage.base import Store

from ..memory_store import StoreOpener

START = 1_700_000_000
PURGED = 1  # recallcore.mirror.PURGED: a purged serial's expiry
ISSUERS = ["", "https://a.example"]  # "" is the server's default issuer
SUBJECTS = ["alice", "bob", "carol"]
CLIENTS = ["web", "cli"]
FAMILIES = ["", "fam-1", "fam-2"]
JTIS = ["j1", "j2", "j3"]
STEPS = [0, 1, 5, 20, 45, 90]  # clock advances
LIFETIMES = [1, 5, 6, 20, 25, 45, 60]
FOREIGN = [("https://idp.example", "x1"), ("https://idp.example", "x2"), ("https://a.example", "x3"),
           ("https://a.example", "j1")]  # the last one may be registered later, or not


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now


@dataclasses.dataclass
class Token:
    issuer: str
    jti: str
    subject: str
    client_id: str
    family: str
    expires_at: int


async def started(settings_: Settings, clock: FakeClock, store: Store | None = None) -> Engine:
    """An Engine (on `store`, else the LMDB store of settings_.data_dir) whose
    start-up sweep has run: the sweeper task submits its first sweep as soon
    as it is scheduled (one yield), and our own sweep, queued behind it,
    returns only after it."""
    engine = Engine(settings_, clock=lambda: clock.now, store=store)
    try:
        await engine.start()
        await asyncio.sleep(0)  # a yield, not a wait: lets the sweeper task take its first step
        await engine.sweep()
    except BaseException:
        await engine.close()
        raise
    return engine


class EngineMachine(RuleBasedStateMachine):
    store_kind = "lmdb"

    def __init__(self) -> None:
        super().__init__()
        self.stores = StoreOpener(self.store_kind)
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="recallcore-model-")
        self.engine: Engine | None = None
        self.clock = FakeClock(START)
        # the model
        self.tokens: dict[int, Token] = {}           # serial -> token
        self.jtis: dict[tuple[str, str], int] = {}   # (issuer, jti) -> serial, until purged
        self.revoked: set[int] = set()               # the server's revoked set
        self.revoked_by: dict[int, tuple[int, str]] = {}  # serial -> (time, reason)
        self.foreign: dict[int, tuple[int, int, str]] = {}  # key -> (expires_at, time, reason)
        self.purged: set[int] = set()
        self.seq = 0

    # ------------------------------------------------------------ plumbing

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def open(self) -> None:
        self.engine = self.run(started(self.cfg, self.clock, self.stores()))

    def teardown(self) -> None:
        try:
            if self.engine is not None:
                self.run(self.engine.close())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def now(self) -> int:
        return self.clock.now

    @property
    def n(self) -> int:
        return len(self.tokens)

    def published(self, after: int) -> list[Delta]:
        """The deltas the engine holds after seq `after` (its ring, else its log)."""
        return self.run(self.engine.history(after, 1000))

    # --------------------------------------------------------------- model

    def expiry(self, serial: int) -> int:
        return PURGED if serial in self.purged else self.tokens[serial].expires_at

    def expired(self, serial: int) -> bool:
        return self.expiry(serial) <= self.now

    def state(self, serial: int) -> TokenState:
        if not 0 < serial <= self.n:
            return TokenState.UNKNOWN
        if self.expired(serial):
            return TokenState.EXPIRED
        return TokenState.REVOKED if serial in self.revoked else TokenState.ACTIVE

    def ref_state(self, issuer: str, jti: str) -> TokenState:
        """The state by (issuer, jti): that of its serial while registered, else
        REVOKED while its key is in the foreign set, else that of the serial a
        canonical jti encodes (under any issuer), else UNKNOWN."""
        serial = self.jtis.get((issuer, jti))
        revoked_foreign = foreign_key(issuer, jti) in self.foreign
        if serial:
            state = self.state(serial)
            # A key revoked before registration revoked the serial with it.
            assert not (revoked_foreign and state == TokenState.ACTIVE)
            return state
        if revoked_foreign:
            return TokenState.REVOKED
        encoded = serial_from_jti(jti, self.engine.store_id)  # a canonical jti under another issuer spelling: its serial
        return self.state(encoded) if encoded and encoded <= self.n else TokenState.UNKNOWN

    def model_sweep(self) -> tuple[set[int], set[int], list[int]]:
        # Revocations are forgotten clock_skew after expiry; records are purged
        # audit_retention after expiry (the two are independent).
        forget_before = self.now - self.cfg.clock_skew
        removed = {s for s in self.revoked if self.expiry(s) <= forget_before}
        due = sorted((exp, key) for key, (exp, _, _) in self.foreign.items() if exp <= forget_before)
        due = due[: self.cfg.purge_batch]
        cutoff = self.now - self.cfg.audit_retention
        purge = [s for s in sorted(self.tokens)
                 if s not in self.purged and PURGED < self.tokens[s].expires_at <= cutoff]
        purge = purge[: self.cfg.purge_batch]
        self.revoked -= removed
        for _, key in due:
            del self.foreign[key]
        for serial in purge:
            self.purged.add(serial)
            token = self.tokens[serial]
            del self.jtis[(token.issuer, token.jti)]
        if removed or due or purge:
            self.seq += 1
        return removed, {key for _, key in due}, purge

    # --------------------------------------------------------------- rules

    @initialize(retention=st.sampled_from([0, 30, 10**6]), purge_batch=st.sampled_from([2, 10_000]),
                skew=st.sampled_from([0, 30]), data=st.data())
    def start(self, retention, purge_batch, skew, data):
        self.cfg = Settings(
            data_dir=self.dir, listen="127.0.0.1:0", sweep_interval=3600,
            audit_retention=retention, purge_batch=purge_batch,
            clock_skew=skew,
        )
        self.open()
        assert self.engine.state.seq == 0
        specs = self.draw_specs(data, 0, 8)
        if specs:
            self.register_specs(specs)

    def draw_specs(self, data, low: int, high: int) -> list[TokenSpec]:
        specs = []
        for _ in range(data.draw(st.integers(min_value=low, max_value=high), label="count")):
            issuer = data.draw(st.sampled_from(ISSUERS))
            kind = data.draw(st.sampled_from(["none", "none", "none", "pool", "pool", "canonical"]))
            if kind == "pool":
                jti = data.draw(st.sampled_from(JTIS))
            elif kind == "canonical" and self.n:  # refers to an issued serial: existing, or refused
                jti = canonical_jti(data.draw(st.integers(min_value=1, max_value=self.n)), self.engine.store_id)
            else:
                jti = ""
            # Lifetimes line up with the clock's steps so that "now == expiry" happens.
            if data.draw(st.integers(min_value=0, max_value=9)) == 0:
                issued_at, expires_at = self.now - 100, self.now - data.draw(st.sampled_from([0, 1, 30]))
            else:
                issued_at, expires_at = 0, self.now + data.draw(st.sampled_from(LIFETIMES))
            specs.append(TokenSpec(
                subject=data.draw(st.sampled_from(SUBJECTS)), client_id=data.draw(st.sampled_from(CLIENTS)),
                issuer=issuer, jti=jti, family=data.draw(st.sampled_from(FAMILIES)),
                issued_at=issued_at, expires_at=expires_at,
            ))
        return specs

    @rule(data=st.data())
    def register(self, data):
        specs = self.draw_specs(data, 1, 4)
        if data.draw(st.integers(min_value=0, max_value=5), label="unissued canonical") == 0:
            # A canonical jti of a serial not issued yet: the whole call is refused.
            at = data.draw(st.integers(min_value=0, max_value=len(specs)))
            jti = canonical_jti(self.n + data.draw(st.integers(min_value=1, max_value=3)), self.engine.store_id)
            specs.insert(at, TokenSpec(subject="mallory", client_id="web", jti=jti))
        self.register_specs(specs)

    def register_specs(self, specs: list[TokenSpec]) -> None:
        # What operations.register promises.
        expected, fresh, seen, serial, invalid = [], [], {}, self.n, False
        for spec in specs:
            issuer = spec.issuer or DEFAULT_ISSUER
            if spec.jti:
                known = seen.get((issuer, spec.jti)) or self.jtis.get((issuer, spec.jti))
                if known:
                    expected.append((known, spec.jti, canonical_jti(known, self.engine.store_id), True))
                    continue
                if looks_canonical(spec.jti):
                    invalid = True
                    break
            serial += 1
            jti = spec.jti or canonical_jti(serial, self.engine.store_id)
            seen[(issuer, jti)] = serial
            expected.append((serial, jti, canonical_jti(serial, self.engine.store_id), False))
            fresh.append((serial, Token(issuer, jti, spec.subject, spec.client_id, spec.family, spec.expires_at)))

        before = self.seq
        if invalid:
            event("register: reserved canonical jti refused")
            with pytest.raises(InvalidArgument):
                self.run(self.engine.register(specs, "model"))
            assert self.published(before) == []
            return
        result = self.run(self.engine.register(specs, "model"))
        got = [(t.serial, t.jti, t.canonical_jti, t.existing) for t in result.tokens]
        assert got == expected
        if any(existing for *_, existing in expected):
            event("register: existing (issuer, jti)")
        # A pair revoked by (issuer, jti) before it was registered is registered revoked.
        # (even one that has already expired: it is in the revoked set until swept).
        cut = {s for s, t in fresh if foreign_key(t.issuer, t.jti) in self.foreign}
        if cut:
            event("register: revoked by key before registration")
        for serial, token in fresh:
            self.tokens[serial] = token
            self.jtis[(token.issuer, token.jti)] = serial
        if fresh:
            self.seq += 1
            (delta,) = self.published(before)
            assert delta.registered_through == self.n
            assert {s: e for e, bm in delta.expiring for s in bm} == {s: t.expires_at for s, t in fresh}
            assert set(delta.added) == cut and delta.foreign_added == frozenset()
            self.revoked |= cut
            for serial in cut:
                self.revoked_by[serial] = (self.now, "revoked before registration or by a cut-off rule")
        else:
            assert self.published(before) == []
        assert result.seq == self.seq

    def _revoke(self, selector: Selector, covered: set[int], refs: list[JtiRef]) -> None:
        """Revoke and compare count, seq and the published delta with the model."""
        foreign: dict[int, int] = {}
        for ref in refs:
            serial = self.jtis.get((ref.issuer, ref.jti))
            if serial:
                covered.add(serial)
                continue
            encoded = serial_from_jti(ref.jti, self.engine.store_id)
            if encoded:  # a canonical jti names its serial under any issuer; ignored if not issued
                if encoded <= self.n:
                    covered.add(encoded)
                continue
            expires_at = ref.expires_at or self.now + DEFAULT_MAX_TOKEN_LIFETIME
            if expires_at > self.now:
                foreign[foreign_key(ref.issuer, ref.jti)] = expires_at
        added = {s for s in covered if s not in self.revoked and not self.expired(s)}
        new_foreign = {k: e for k, e in foreign.items() if k not in self.foreign}
        explicit = {foreign_key(r.issuer, r.jti): r.expires_at for r in refs if r.expires_at}
        extended = {k: e for k, e in explicit.items()
                    if k in foreign and k in self.foreign and e > self.foreign[k][0]}
        if new_foreign:
            event("revoke: new foreign key")
        if extended:
            event("revoke: foreign key's expiry extended")
        if any(self.expired(s) for s in covered):
            event("revoke: covers an expired serial")
        reason = f"reason-{self.seq}"

        before = self.seq
        result = self.run(self.engine.revoke(selector, reason, "model"))
        assert result.count == len(added) + len(new_foreign)
        if result.count or extended:
            # A revoked token registered under a caller-chosen jti also puts its
            # (issuer, jti) key in the foreign set, expiring with the token (not counted).
            for serial in added:
                token = self.tokens[serial]
                key = foreign_key(token.issuer, token.jti)
                if serial_from_jti(token.jti, self.engine.store_id) != serial and key not in self.foreign:
                    new_foreign[key] = token.expires_at
            self.seq += 1
            (delta,) = self.published(before)
            assert set(delta.added) == added
            assert delta.foreign_added == frozenset(new_foreign)
            self.revoked |= added
            for serial in added:
                self.revoked_by[serial] = (self.now, reason)
            for key, exp in new_foreign.items():
                self.foreign[key] = (exp, self.now, reason)
            for key, exp in extended.items():
                self.foreign[key] = (exp, *self.foreign[key][1:])
        else:
            assert self.published(before) == []
        assert result.seq == self.seq

    @rule(data=st.data())
    def revoke_serials(self, data):
        serials = data.draw(st.lists(st.integers(min_value=1, max_value=self.n + 3), min_size=1, max_size=4))
        self._revoke(Selector(serials=tuple(serials)), {s for s in serials if s <= self.n}, [])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def revoke_registered_by_jti(self, data):
        serials = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1, max_size=3))
        refs = [JtiRef(self.tokens[s].issuer, self.tokens[s].jti) for s in serials]
        self._revoke(Selector(tokens=tuple(refs)), set(), refs)

    @rule(data=st.data())
    def revoke_foreign(self, data):
        refs = []
        # One reference per token: how duplicates in one call combine is tested
        # on its own (test_engine.py).
        for issuer, jti in data.draw(st.lists(st.sampled_from(FOREIGN), min_size=1, max_size=3, unique=True)):
            offset = data.draw(st.sampled_from([None, 0, -5, *LIFETIMES]))  # None: the server's default
            expires_at = 0 if offset is None else self.now + offset
            refs.append(JtiRef(issuer, jti, expires_at))
        self._revoke(Selector(tokens=tuple(refs)), set(), refs)

    @rule(data=st.data())
    def revoke_by_canonical_jti(self, data):
        # Under any issuer spelling, for serials issued or not (yet).
        refs = [JtiRef(data.draw(st.sampled_from(["https://other.example", DEFAULT_ISSUER, *ISSUERS[1:]])),
                       canonical_jti(s, data.draw(st.sampled_from([self.engine.store_id, ""]))), data.draw(st.sampled_from([0, self.now + 5])))
                for s in data.draw(st.lists(st.integers(min_value=1, max_value=self.n + 3), min_size=1, max_size=2))]
        self._revoke(Selector(tokens=tuple(refs)), set(), refs)

    @rule(kind=st.sampled_from(["subject", "client_id", "family"]), data=st.data())
    def revoke_by_name(self, kind, data):
        pool = {"subject": SUBJECTS, "client_id": CLIENTS, "family": FAMILIES[1:]}[kind]
        name = data.draw(st.sampled_from(pool + ["nobody"]))
        covered = {s for s, t in self.tokens.items() if getattr(t, kind) == name and s not in self.purged}
        self._revoke(Selector(**{kind: name}), covered, [])

    @rule(data=st.data())
    def revoke_mixed(self, data):
        serials = data.draw(st.lists(st.integers(min_value=1, max_value=self.n + 2), max_size=2))
        subject = data.draw(st.sampled_from(["", *SUBJECTS]))
        refs = [JtiRef(*data.draw(st.sampled_from(FOREIGN)), self.now + data.draw(st.sampled_from(LIFETIMES)))]
        covered = {s for s in serials if s <= self.n}
        covered |= {s for s, t in self.tokens.items() if subject and t.subject == subject and s not in self.purged}
        self._revoke(Selector(serials=tuple(serials), tokens=tuple(refs), subject=subject), covered, refs)

    @rule(seconds=st.sampled_from(STEPS), then_sweep=st.booleans())
    def advance_clock(self, seconds, then_sweep):
        self.clock.now += seconds
        if then_sweep:
            self.sweep()

    @rule()
    def sweep(self):
        before = self.seq
        removed, forgotten, purged = self.model_sweep()
        got = self.run(self.engine.sweep())
        for name, happened in (("removed", removed), ("forgot foreign", forgotten), ("purged", purged)):
            if happened:
                event(f"sweep: {name}")
        if removed or forgotten or purged:
            assert got == self.seq
            (delta,) = self.published(before)
            assert set(delta.removed) == removed
            assert delta.foreign_removed == frozenset(forgotten)
            assert sorted(s for _, bm in delta.expiring for s in bm) == purged
        else:
            assert got == 0
            assert self.published(before) == []

    @rule()
    def restart(self):
        store_id = self.engine.store_id
        self.run(self.engine.close())
        self.engine = None
        # The start-up sweep of the sweeper task, then ours (see `started`).
        self.model_sweep()
        self.model_sweep()
        self.open()
        assert self.engine.store_id == store_id
        assert self.engine.state.seq == self.seq

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def introspect(self, data):
        serial = data.draw(st.sampled_from(sorted(self.tokens)))
        out = self.run(self.engine.introspect(serial))
        assert out["state"] == self.state(serial)
        assert out["active"] == (self.state(serial) == TokenState.ACTIVE)
        token = self.tokens[serial]
        if serial in self.purged:
            assert "sub" not in out and "jti" not in out
        else:
            assert (out["sub"], out["client_id"], out["iss"], out["jti"], out["exp"], out["family"]) == (
                token.subject, token.client_id, token.issuer, token.jti, token.expires_at, token.family)

    # ---------------------------------------------------------- invariants

    @invariant()
    def serial_states_agree(self):
        if self.engine is None:
            return
        engine = self.engine
        serials = list(range(1, self.n + 2))

        async def singles():
            return [await engine.check(s) for s in serials]

        results = self.run(singles())
        assert [r.state for r in results] == [self.state(s) for s in serials]
        for serial, r in zip(serials, results):
            assert r.seq == self.seq
            assert r.serial == serial
            if r.state == TokenState.REVOKED:
                assert (r.revoked_at, r.reason) == self.revoked_by[serial]
            else:
                assert (r.revoked_at, r.reason) == (0, "")
        packed = engine.check_packed(array("Q", serials).tobytes())
        assert list(packed) == [int(r.state) for r in results]

    @invariant()
    def ref_states_agree(self):
        if self.engine is None:
            return
        refs = [JtiRef(t.issuer, t.jti) for t in self.tokens.values()]
        refs += [JtiRef(i, j) for i, j in FOREIGN]
        refs += [JtiRef(DEFAULT_ISSUER, j) for j in JTIS]
        # Canonical jtis under an issuer nothing was registered under: they name their serial.
        refs += [JtiRef("https://other.example", canonical_jti(s, self.engine.store_id)) for s in sorted({1, self.n, self.n + 1}) if s]
        engine = self.engine

        async def both():
            return [await engine.check(r) for r in refs], await engine.check_refs(refs)

        singles, batch = self.run(both())
        assert [r.state for r in singles] == batch
        for ref, got in zip(refs, singles):
            assert got.state == self.ref_state(ref.issuer, ref.jti), ref
            serial = self.jtis.get((ref.issuer, ref.jti), 0)
            if not serial and foreign_key(ref.issuer, ref.jti) not in self.foreign:
                encoded = serial_from_jti(ref.jti, self.engine.store_id) or 0
                serial = encoded if encoded <= self.n else 0
            assert got.serial == serial
            if got.state == TokenState.REVOKED and not serial:
                _, time, reason = self.foreign[foreign_key(ref.issuer, ref.jti)]
                assert (got.revoked_at, got.reason) == (time, reason)

    @invariant()
    def stats_agree(self):
        if self.engine is None:
            return
        stats = self.run(self.engine.stats())
        expired = sum(1 for s in self.tokens if self.expired(s))
        revoked = sum(1 for s in self.revoked if not self.expired(s))
        assert (stats.registered, stats.expired, stats.revoked, stats.active, stats.foreign_revoked, stats.seq) == (
            self.n, expired, revoked, self.n - expired - revoked, len(self.foreign), self.seq)

    @invariant()
    def seq_and_deltas_agree(self):
        if self.engine is None:
            return
        assert self.engine.state.seq == self.seq
        chain = self.published(0)
        assert [(d.prev_seq, d.seq) for d in chain] == [(s, s + 1) for s in range(self.seq)]
        assert self.engine.state.revocations.registered_through == self.n


# No "explain" phase: its line tracing makes a failing run of this machine
# (threads, LMDB) take minutes; the shrunk steps are explanation enough.
class MemoryEngineMachine(EngineMachine):
    """The same machine on the in-memory store: the core's contracts hold on any engine."""

    store_kind = "memory"


_MACHINE_SETTINGS = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
EngineMachine.TestCase.settings = _MACHINE_SETTINGS
MemoryEngineMachine.TestCase.settings = _MACHINE_SETTINGS
TestEngineMachine = EngineMachine.TestCase
TestMemoryEngineMachine = MemoryEngineMachine.TestCase
