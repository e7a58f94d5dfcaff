"""recallcore.engine: registration, revocation, sweeps, audit and restarts.

Plain tests against a real Engine (the writer thread, and each storage engine
in turn: LMDB in a temporary directory, the in-memory store of the tests) on
an event loop the test owns, with a fake clock. The rule-based
model of the same engine is in test_engine_model.py.
"""

import asyncio
from array import array

import pytest
from recallclient.jti import canonical_jti
from recallclient.types import JtiRef, TokenSpec, TokenState

from recallcore.core.errors import InvalidArgument
from recallcore.core.model import Selector
from recallcore.core.validate import MAX_TIME
from recallcore.settings import DEFAULT_ISSUER, Settings

from ..memory_store import StoreOpener
from .test_operations_model import START, FakeClock, started

ACTIVE, REVOKED, EXPIRED, UNKNOWN = TokenState.ACTIVE, TokenState.REVOKED, TokenState.EXPIRED, TokenState.UNKNOWN
IDP = "https://idp.example"


class Harness:
    """An Engine on a loop of its own; `run` drives a coroutine to completion."""

    def __init__(self, settings: Settings, clock: FakeClock, stores: StoreOpener) -> None:
        self.settings = settings
        self.clock = clock
        self.stores = stores
        self.loop = asyncio.new_event_loop()
        self.engine = None
        self.open()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def open(self) -> None:
        self.engine = self.run(started(self.settings, self.clock, self.stores()))

    def close(self) -> None:
        if self.engine is not None:
            self.run(self.engine.close())
            self.engine = None

    def restart(self) -> None:
        self.close()
        self.open()

    def shutdown(self) -> None:
        try:
            self.close()
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    # shorthands
    def register(self, *specs: TokenSpec):
        return self.run(self.engine.register(list(specs), "test"))

    def revoke(self, reason: str = "test", **selector):
        return self.run(self.engine.revoke(Selector(**selector), reason, "test"))

    def state(self, ref) -> TokenState:
        return self.run(self.engine.check(ref)).state

    def packed(self, serials) -> list[TokenState]:
        return [TokenState(b) for b in self.engine.check_packed(array("Q", serials).tobytes())]

    def history(self, after: int):
        return self.run(self.engine.history(after, 1000))

    @property
    def seq(self) -> int:
        return self.engine.state.seq

    @property
    def through(self) -> int:
        return self.engine.state.revocations.registered_through


def spec(subject: str = "alice", ttl: int = 600, **fields) -> TokenSpec:
    return TokenSpec(subject=subject, client_id=fields.pop("client_id", "web"),
                     expires_at=fields.pop("expires_at", 0) or START + ttl, **fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def make_harness(data_dir, clock, stores, **settings) -> Harness:
    return Harness(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, **settings), clock, stores)


@pytest.fixture
def h(data_dir, clock, stores):
    harness = make_harness(data_dir, clock, stores, clock_skew=0)
    yield harness
    harness.shutdown()


# --------------------------------------------------------------- register


def test_one_call_gets_dense_serials_in_request_order(h):
    first = h.register(*(spec(f"user{i}") for i in range(5)))
    assert [t.serial for t in first.tokens] == [1, 2, 3, 4, 5]
    assert [t.canonical_jti for t in first.tokens] == [canonical_jti(s, h.engine.store_id) for s in range(1, 6)]
    assert [t.jti for t in first.tokens] == [canonical_jti(s, h.engine.store_id) for s in range(1, 6)]
    assert not any(t.existing for t in first.tokens)
    assert first.seq == 1 == h.seq
    second = h.register(spec("x"), spec("y"), spec("z"))
    assert [t.serial for t in second.tokens] == [6, 7, 8]
    assert second.seq == 2 and h.through == 8


def test_the_same_issuer_and_jti_keeps_its_serial(h):
    first = h.register(spec(issuer=IDP, jti="x"), spec(), spec("bob", issuer=IDP, jti="x"))
    assert [(t.serial, t.jti, t.existing) for t in first.tokens] == [
        (1, "x", False), (2, canonical_jti(2, h.engine.store_id), False), (1, "x", True)]
    assert first.seq == 1

    second = h.register(spec(issuer=IDP, jti="x"), spec(issuer=IDP, jti="y"))
    assert [(t.serial, t.existing) for t in second.tokens] == [(1, True), (3, False)]
    assert second.seq == 2

    # Only known pairs: nothing is written, and the answer carries the current seq.
    again = h.register(spec(issuer=IDP, jti="x"), spec(jti=canonical_jti(2, h.engine.store_id)))
    assert [(t.serial, t.existing) for t in again.tokens] == [(1, True), (2, True)]
    assert again.seq == h.seq == 2
    assert h.history(2) == [] and h.through == 3
    # The same jti under another issuer is another token.
    other = h.register(spec(issuer="https://other.example", jti="x"))
    assert [(t.serial, t.existing) for t in other.tokens] == [(4, False)]


@pytest.mark.parametrize("jti", [
    canonical_jti(4),                       # the serial after this call's first: never issued
    canonical_jti(10**6),
    "rc1.1.0000",                           # wrong check digits
    "rc1.whatever",
    canonical_jti(1, "another-store"),      # the bound form, of another store
    "rc2.1.00000000",
])
def test_a_caller_chosen_jti_in_the_reserved_form_is_refused(h, jti):
    h.register(spec(), spec())
    seq = h.seq
    with pytest.raises(InvalidArgument, match=r"tokens\[1\]\.jti"):
        h.register(spec("bob"), spec("carol", jti=jti), spec("dave"))
    assert (h.seq, h.through) == (seq, 2)
    assert h.history(seq) == []
    assert [t.serial for t in h.register(spec("erin")).tokens] == [3]


def test_a_canonical_jti_assigned_earlier_in_the_same_call_names_that_token(h):
    result = h.register(spec(), spec("bob", jti=canonical_jti(1, h.engine.store_id)))
    assert [(t.serial, t.existing) for t in result.tokens] == [(1, False), (1, True)]


def test_a_canonical_jti_under_another_issuer_is_refused(h):
    h.register(spec())  # serial 1 under the default issuer
    with pytest.raises(InvalidArgument):
        h.register(spec(issuer=IDP, jti=canonical_jti(1)))
    assert h.through == 1


def test_a_default_expiry_past_2106_is_invalid_not_an_internal_error(data_dir, stores):
    clock = FakeClock(MAX_TIME - 100)
    harness = make_harness(data_dir, clock, stores)
    try:
        with pytest.raises(InvalidArgument, match="expires_at"):
            harness.run(harness.engine.register([TokenSpec("alice", "web")], "test"))
        assert harness.through == 0 and harness.seq == 0
    finally:
        harness.shutdown()


# ------------------------------------------------------------------ states


def test_states_expired_wins_over_revoked_and_unknown_above_the_last_serial(h, clock):
    h.register(spec(ttl=10), spec(ttl=10), spec(ttl=100), spec(ttl=100))
    result = h.revoke(serials=(2, 3, 9), reason="compromised")
    assert result.count == 2  # 9 is not issued: ignored
    assert [h.state(s) for s in range(1, 6)] == [ACTIVE, REVOKED, REVOKED, ACTIVE, UNKNOWN]
    check = h.run(h.engine.check(3))
    assert (check.revoked_at, check.reason, check.seq) == (START, "compromised", h.seq)
    clock.now = START + 9
    assert h.packed([1, 2, 3, 4, 5]) == [ACTIVE, REVOKED, REVOKED, ACTIVE, UNKNOWN]
    clock.now = START + 10  # expiry is inclusive
    assert [h.state(s) for s in range(1, 6)] == [EXPIRED, EXPIRED, REVOKED, ACTIVE, UNKNOWN]
    assert h.packed([5, 4, 3, 2, 1, 3]) == [UNKNOWN, ACTIVE, REVOKED, EXPIRED, EXPIRED, REVOKED]
    stats = h.run(h.engine.stats())
    assert (stats.registered, stats.active, stats.revoked, stats.expired) == (4, 1, 1, 2)
    # Serial 9 was never issued, so it was never revoked: registering it gives an ACTIVE token.
    h.register(*(spec() for _ in range(5)))
    assert h.state(9) == ACTIVE


def test_revoke_ignores_expired_and_already_revoked_tokens(h, clock):
    h.register(spec(ttl=10), spec(ttl=100))
    assert h.revoke(serials=(2,)).count == 1
    seq = h.seq
    clock.now = START + 10
    again = h.revoke(serials=(1, 2, 3))
    assert (again.count, again.seq, h.seq) == (0, seq, seq)
    assert h.history(seq) == []


# ------------------------------------------------------------------ sweep


def test_sweep_forgets_expired_revocations_and_publishes_them(h, clock):
    h.register(spec(ttl=10), spec(ttl=10), spec(ttl=100))
    h.revoke(serials=(1, 2, 3))
    seq = h.seq
    assert h.run(h.engine.sweep()) == 0  # nothing due yet
    clock.now = START + 10
    assert h.run(h.engine.sweep()) == seq + 1
    assert set(h.engine.state.revocations.revoked) == {3}
    (delta,) = h.history(seq)
    assert (delta.prev_seq, delta.seq) == (seq, seq + 1)
    assert set(delta.removed) == {1, 2} and not delta.added
    assert [h.state(s) for s in (1, 2, 3)] == [EXPIRED, EXPIRED, REVOKED]
    assert h.run(h.engine.sweep()) == 0 and h.seq == seq + 1


def test_sweep_waits_for_the_clock_skew(data_dir, clock, stores):
    harness = make_harness(data_dir, clock, stores, clock_skew=30)
    try:
        harness.register(spec(ttl=10))
        harness.revoke(serials=(1,))
        clock.now = START + 10
        assert harness.run(harness.engine.sweep()) == 0
        assert 1 in harness.engine.state.revocations.revoked and harness.state(1) == EXPIRED
        clock.now = START + 40
        assert harness.run(harness.engine.sweep()) == harness.seq
        assert 1 not in harness.engine.state.revocations.revoked
    finally:
        harness.shutdown()


def test_a_foreign_token_stays_revoked_until_a_sweep_after_its_expiry(h, clock):
    ref = JtiRef(IDP, "ext-1", START + 10)
    assert h.revoke(tokens=(ref,), reason="leaked").count == 1
    assert h.revoke(tokens=(JtiRef(IDP, "ext-2", START),)).count == 0  # already expired: ignored
    clock.now = START + 50
    # Check does not look at the clock for foreign keys: the key holds until swept.
    check = h.run(h.engine.check(JtiRef(IDP, "ext-1")))
    assert (check.state, check.serial, check.revoked_at, check.reason) == (REVOKED, 0, START, "leaked")
    assert h.run(h.engine.stats()).foreign_revoked == 1
    seq = h.seq
    assert h.run(h.engine.sweep()) == seq + 1
    (delta,) = h.history(seq)
    assert len(delta.foreign_removed) == 1
    assert h.state(JtiRef(IDP, "ext-1")) == UNKNOWN
    assert h.run(h.engine.stats()).foreign_revoked == 0


# ------------------------------------------------------------------ audit


def test_every_change_has_an_audit_record(h, clock):
    h.register(spec(ttl=10), spec(ttl=100))
    h.revoke(serials=(1,), reason="stolen")
    h.revoke(tokens=(JtiRef(IDP, "ext", START + 5),), reason="leaked")
    clock.now = START + 10
    h.run(h.engine.sweep())
    assert h.seq == 4
    with h.engine.store.read() as txn:  # the loop is not running: reading here is fine
        records = [txn.audit(seq) for seq in range(1, h.seq + 1)]
        assert txn.audit(h.seq + 1) is None
    assert [(r["seq"], r["kind"]) for r in records] == [
        (1, "register"), (2, "revoke"), (3, "revoke"), (4, "sweep")]
    assert all(r["time"] for r in records)
    assert (records[0]["count"], records[0]["first_serial"], records[0]["last_serial"]) == (2, 1, 2)
    assert (records[1]["reason"], records[1]["actor"], records[1]["count"]) == ("stolen", "test", 1)
    assert records[3]["expired"] == 1 and records[3]["foreign_expired"] == 1


# ------------------------------------------------------------ group commit


def test_concurrent_revokes_get_distinct_dense_seqs(h):
    h.register(*(spec(f"user{i}") for i in range(200)))
    first = h.seq

    async def storm():
        return await asyncio.gather(*(
            h.engine.revoke(Selector(serials=(serial,)), f"r{serial}", "test") for serial in range(1, 201)
        ))

    results = h.run(storm())
    assert all(r.count == 1 for r in results)
    assert sorted(r.seq for r in results) == list(range(first + 1, first + 201))
    assert h.seq == first + 200
    assert h.packed(range(1, 201)) == [REVOKED] * 200
    chain = h.history(first)
    assert [(d.prev_seq, d.seq) for d in chain] == [(s, s + 1) for s in range(first, first + 200)]
    assert sorted(int(next(iter(d.added))) for d in chain) == list(range(1, 201))


def test_concurrent_revokes_of_one_token_make_one_change(h):
    h.register(spec())

    async def storm():
        return await asyncio.gather(*(h.engine.revoke(Selector(serials=(1,)), "", "test") for _ in range(50)))

    results = h.run(storm())
    assert sorted(r.count for r in results) == [0] * 49 + [1]
    assert {r.seq for r in results} == {2} and h.seq == 2


# ----------------------------------------------------------------- restart


def test_restart_keeps_state_and_serials_dense(h, clock):
    h.register(spec(ttl=10), spec(), spec(issuer=IDP, jti="custom"))
    h.revoke(serials=(2,))
    h.revoke(tokens=(JtiRef(IDP, "ext"),))
    store_id, seq, digest = h.engine.store_id, h.seq, h.engine.state.revocations.digest()
    h.restart()
    assert (h.engine.store_id, h.seq, h.through) == (store_id, seq, 3)
    assert h.engine.state.revocations.digest() == digest
    assert [h.state(s) for s in (1, 2, 3, 4)] == [ACTIVE, REVOKED, ACTIVE, UNKNOWN]
    assert h.state(JtiRef(IDP, "ext")) == REVOKED
    result = h.register(spec(), spec(issuer=IDP, jti="custom"), spec())
    assert [(t.serial, t.existing) for t in result.tokens] == [(4, False), (3, True), (5, False)]
    assert result.seq == seq + 1
    clock.now = START + 10
    h.restart()  # the start-up sweep forgets serial 1... which was never revoked: no change
    assert h.seq == seq + 1 and h.state(1) == EXPIRED
    h.restart()
    assert [t.serial for t in h.register(spec()).tokens] == [6]
    assert [(d.prev_seq, d.seq) for d in h.history(0)] == [(s, s + 1) for s in range(h.seq)]


# -------------------------------------------------- revoked before registered


def test_a_pair_revoked_before_registration_is_registered_revoked(h):
    assert h.revoke(tokens=(JtiRef(IDP, "late"),), reason="logout").count == 1
    (token,) = h.register(spec(issuer=IDP, jti="late")).tokens
    assert h.state(token.serial) == REVOKED
    assert h.state(JtiRef(IDP, "late")) == REVOKED
    assert h.packed([token.serial]) == [REVOKED]


def test_revoking_a_canonical_jti_under_another_issuer_spelling_revokes_the_serial(h):
    (token,) = h.register(spec()).tokens  # under the default issuer
    other = JtiRef(DEFAULT_ISSUER + ".example", token.canonical_jti)
    assert h.revoke(tokens=(other,)).count == 1
    assert h.state(other) == REVOKED  # Check by that spelling resolves to the serial...
    assert h.state(token.serial) == REVOKED  # ...so the serial must be revoked too


def test_a_canonical_jti_of_another_store_is_not_a_serial_of_this_one(h):
    """Jtis are bound to their store: serial 1 of another deployment is a foreign token here."""
    (token,) = h.register(spec()).tokens
    stranger = JtiRef(DEFAULT_ISSUER, canonical_jti(token.serial, "another-store"))
    assert token.canonical_jti != stranger.jti and h.state(stranger) == UNKNOWN
    assert h.revoke(tokens=(stranger,)).count == 1  # revoked as a foreign token...
    assert h.state(stranger) == REVOKED and h.state(token.serial) == ACTIVE  # ...not as serial 1


def test_the_unbound_rc1_form_still_names_its_serial_during_the_transition(h):
    (token,) = h.register(spec()).tokens
    old = JtiRef(DEFAULT_ISSUER, canonical_jti(token.serial))
    assert old.jti.startswith("rc1.") and h.state(old) == ACTIVE
    assert h.revoke(tokens=(old,)).count == 1
    assert h.state(token.serial) == REVOKED


def test_revoking_the_canonical_jti_of_a_serial_not_issued_yet_does_not_revoke_it_later(h):
    h.register(spec())
    h.revoke(tokens=(JtiRef(DEFAULT_ISSUER, canonical_jti(2, h.engine.store_id)),))
    (token,) = h.register(spec("bob")).tokens
    assert token.serial == 2
    assert h.state(2) == ACTIVE


def test_two_references_to_one_foreign_token_keep_the_later_expiry(h, clock):
    result = h.revoke(tokens=(JtiRef(IDP, "dup", START + 60), JtiRef(IDP, "dup", START + 5)))
    assert result.count == 1
    clock.now = START + 10
    h.run(h.engine.sweep())
    assert h.state(JtiRef(IDP, "dup")) == REVOKED


def test_extending_a_foreign_revocation_twice_in_one_call_keeps_the_later_expiry(h, clock):
    h.revoke(tokens=(JtiRef(IDP, "dup", START + 1),))
    again = h.revoke(tokens=(JtiRef(IDP, "dup", START + 60), JtiRef(IDP, "dup", START + 5)))
    assert again.count == 0
    clock.now = START + 10
    h.run(h.engine.sweep())
    assert h.state(JtiRef(IDP, "dup")) == REVOKED
