"""recallclient.revoked_set: the pure mirror, checked against plain sets.

Unit tests of apply / merge / load / digest / cut-off rules, Hypothesis
properties for merge, digest and split, and a rule-based state machine (in the style of PyRoaringBitMap's
test/test_state_machine.py) that compares a RevokedSet with a model made of
Python sets after every step. Expiry (and so the four token states) lives in
recallcore.core.mirror since 460a3e0; tests/test_engine*.py cover it through Engine.
"""

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import chained, delta_from_proto, delta_to_proto
from recallclient.jti import foreign_key
from recallclient.revoked_set import (
    ALL,
    CLIENT,
    DIGEST_BITS,
    ISSUER,
    SUBJECT,
    Delta,
    RevokedSet,
    SequenceGap,
    span,
    split,
)

MASK = 2**64 - 1

# Small pools so that histories collide; serials on both sides of digest range
# boundaries (2**20) and at the very top of the 64-bit space.
SERIALS = [*range(1, 13), 2**DIGEST_BITS - 1, 2**DIGEST_BITS, 2**40 + 1, 2**63, MASK - 1, MASK]
# Foreign keys are what foreign_key() gives: uniformly random 64-bit values.
FOREIGN = [foreign_key("https://idp.example", f"x{i}") for i in range(7)]

# Cut-off rules (scope, value, before): overlapping scopes and two rules for one subject.
RULES = [(SUBJECT, "alice", 100), (SUBJECT, "alice", 200), (SUBJECT, "bob", 150), (CLIENT, "web", 120),
         (ISSUER, "https://idp", 50), (ALL, "", 80)]
CLAIMS = [(issuer, subject, client, issued_at)
          for issuer in ("", "https://idp", "https://other")
          for subject in ("", "alice", "bob")
          for client in ("", "web", "cli")
          for issued_at in (0, 49, 50, 79, 80, 119, 120, 199, 200)]

serial_sets = st.frozensets(st.sampled_from(SERIALS), max_size=6)
rule_sets = st.frozensets(st.sampled_from(RULES), max_size=2)
foreign_sets = st.frozensets(st.sampled_from(FOREIGN), max_size=4)
buckets = st.lists(
    st.tuples(st.integers(min_value=1, max_value=40), st.frozensets(st.sampled_from(SERIALS[:12]), min_size=1, max_size=4)),
    max_size=3,
)


def bm(*values: int) -> BitMap64:
    return BitMap64(values)


def delta(prev_seq: int, seq: int | None = None, **fields) -> Delta:
    return Delta(prev_seq=prev_seq, seq=prev_seq + 1 if seq is None else seq, **fields)


@st.composite
def deltas(draw, prev_seq: int) -> Delta:
    """A random delta that follows `prev_seq` (sets may overlap on purpose)."""
    return Delta(
        prev_seq=prev_seq,
        seq=prev_seq + 1,
        added=BitMap64(draw(serial_sets)),
        removed=BitMap64(draw(serial_sets)),
        foreign_added=draw(foreign_sets),
        foreign_removed=draw(foreign_sets),
        registered_through=draw(st.sampled_from([0, 0, 3, 8, 12])),
        expiring=tuple((exp, BitMap64(s)) for exp, s in draw(buckets)),
        time=draw(st.integers(min_value=0, max_value=100)),
        rules_added=draw(rule_sets),
        rules_removed=draw(rule_sets),
        rotated=BitMap64(draw(st.frozensets(st.sampled_from(SERIALS[:12]), max_size=3))),
    )


@st.composite
def histories(draw, max_size: int = 6) -> list[Delta]:
    out: list[Delta] = []
    for _ in range(draw(st.integers(min_value=0, max_value=max_size))):
        out.append(draw(deltas(len(out))))
    return out


def fresh_digest(revoked, foreign, rules=()) -> bytes:
    """The digest of a set loaded with exactly these contents (nothing incremental)."""
    rs = RevokedSet("other")
    rs.load(seq=99, revoked=BitMap64(revoked), foreign=set(foreign), registered_through=5, rules=rules)
    return rs.digest()


def model_cut_off(rules, issuer: str, subject: str, client_id: str, issued_at: int) -> bool:
    """The documented rule: revoked when issued before the latest `before` of
    any rule that applies (ALL; or a non-empty claim equal to the rule's value)."""
    claim = {SUBJECT: subject, CLIENT: client_id, ISSUER: issuer}
    befores = [before for scope, value, before in rules
               if scope == ALL or (claim[scope] and claim[scope] == value)]
    return bool(befores) and issued_at < max(befores)


def snapshot(rs: RevokedSet) -> tuple:
    """Everything observable about a RevokedSet, as plain values."""
    return (rs.seq, set(rs.revoked), set(rs.foreign), rs.registered_through, set(rs.rules),
            rs.digest(), rs.cardinality)


def replay(history: list[Delta]) -> RevokedSet:
    rs = RevokedSet("s")
    for d in history:
        assert rs.apply(d)
    return rs


# ----------------------------------------------------------------- apply


def test_apply_in_order_adds_then_removes():
    rs = RevokedSet("s")
    assert rs.apply(delta(0, added=bm(1, 2, 3), foreign_added=frozenset({9})))
    assert rs.apply(delta(1, added=bm(4), removed=bm(2), foreign_removed=frozenset({9})))
    assert (rs.seq, set(rs.revoked), rs.foreign) == (2, {1, 3, 4}, set())
    # Within one delta `removed` wins over `added` (a change that adds and removes is net removal).
    assert rs.apply(delta(2, added=bm(7), removed=bm(7)))
    assert 7 not in rs.revoked


def test_gap_raises_and_changes_nothing():
    rs = RevokedSet("s")
    rs.apply(delta(0, added=bm(1)))
    before = snapshot(rs)
    with pytest.raises(SequenceGap) as info:
        rs.apply(delta(2, added=bm(5)))
    assert (info.value.have, info.value.prev_seq, info.value.seq) == (1, 2, 3)
    assert snapshot(rs) == before
    # A merged delta that starts before the current seq is a gap too, not a partial apply.
    with pytest.raises(SequenceGap):
        rs.apply(delta(0, 3, added=bm(5)))
    assert snapshot(rs) == before


def test_reapplying_an_old_delta_is_a_noop():
    rs = RevokedSet("s")
    first = delta(0, added=bm(1, 2), foreign_added=frozenset({7}), registered_through=5,
                  expiring=((10, bm(1)),))
    second = delta(1, removed=bm(1, 2), foreign_removed=frozenset({7}))
    assert rs.apply(first)
    assert rs.apply(second)
    before = snapshot(rs)
    assert rs.apply(first) is False
    assert rs.apply(second) is False
    assert snapshot(rs) == before


def test_a_delta_at_or_below_a_loaded_seq_is_skipped():
    rs = RevokedSet("s")
    rs.load(seq=10, revoked=bm(3), registered_through=4)
    assert rs.apply(delta(3, added=bm(1))) is False
    assert set(rs.revoked) == {3}
    assert rs.apply(delta(10, added=bm(1)))
    assert rs.seq == 11


# ----------------------------------------------------------------- merge


def test_merge_requires_adjacent_deltas():
    with pytest.raises(SequenceGap):
        delta(0).merge(delta(2))
    merged = delta(0, added=bm(1)).merge(delta(1, removed=bm(1), added=bm(2)))
    assert (merged.prev_seq, merged.seq) == (0, 2)
    assert (set(merged.added), set(merged.removed)) == ({2}, {1})


def test_empty():
    assert delta(0).empty
    assert delta(0, time=5).empty
    assert not delta(0, registered_through=1).empty
    assert not delta(0, foreign_removed=frozenset({3})).empty
    assert not delta(0, expiring=((5, bm(1)),)).empty


@settings(max_examples=300)
@given(st.data())
def test_merge_then_apply_equals_apply_both(data):
    history = data.draw(histories(max_size=4), label="base")
    first = data.draw(deltas(len(history)), label="first")
    second = data.draw(deltas(first.seq), label="second")

    one_by_one = replay(history)
    assert one_by_one.apply(first) and one_by_one.apply(second)
    merged_delta = first.merge(second)
    merged = replay(history)
    assert merged.apply(merged_delta)
    assert snapshot(merged) == snapshot(one_by_one)
    # Expiry buckets are kept in order, so a later expiry of a serial wins
    # for whoever replays them (recallcore.core.mirror).
    assert merged_delta.expiring == first.expiring + second.expiring
    assert merged_delta.registered_through == max(first.registered_through, second.registered_through)
    assert merged_delta.time == second.time
    assert merged_delta.rotated == first.rotated | second.rotated
    for claims in CLAIMS[::7]:
        assert merged.cut_off(*claims) == one_by_one.cut_off(*claims)
    # A merged delta is empty only when applying it changes nothing.
    if merged_delta.empty:
        assert snapshot(merged)[1:] == snapshot(replay(history))[1:]


@settings(max_examples=150)
@given(st.data())
def test_merge_is_associative_in_effect(data):
    a = data.draw(deltas(0))
    b = data.draw(deltas(1))
    c = data.draw(deltas(2))
    left = replay([a.merge(b).merge(c)])
    right = replay([a.merge(b.merge(c))])
    assert snapshot(left) == snapshot(right) == snapshot(replay([a, b, c]))


# ------------------------------------------------------------------ load


def test_load_replaces_everything():
    rs = RevokedSet("s")
    rs.apply(delta(0, added=bm(1), foreign_added=frozenset({5}), registered_through=2))
    source = bm(2, MASK)
    rs.load(seq=7, revoked=source, foreign=[MASK, 4], registered_through=9)
    assert (rs.seq, set(rs.revoked), rs.foreign, rs.registered_through) == (7, {2, MASK}, {MASK, 4}, 9)
    loaded = rs.digest()
    assert loaded == fresh_digest({2, MASK}, {MASK, 4})
    # load copies: changing the source afterwards does not reach the set.
    source.add(3)
    assert 3 not in rs.revoked
    assert rs.apply(delta(7, added=bm(3), removed=bm(MASK), foreign_removed=frozenset({4})))
    assert rs.digest() == fresh_digest({2, 3}, {MASK}) != loaded


def test_registered_through_never_goes_down():
    rs = RevokedSet("s")
    rs.apply(delta(0, registered_through=8))
    rs.apply(delta(1, registered_through=3))
    rs.apply(delta(2))
    assert rs.registered_through == 8


# ------------------------------------------------------------------ digest


@settings(max_examples=300)
@given(histories(), histories())
def test_digest_equal_iff_same_sets(a, b):
    left, right = replay(a), replay(b)
    # Kept incrementally, the digest equals the one computed from scratch...
    assert left.digest() == fresh_digest(left.revoked, left.foreign, left.rules)
    assert right.digest() == fresh_digest(right.revoked, right.foreign, right.rules)
    # ...and tells the sets apart exactly (seq and registered_through are not part of it).
    same = (set(left.revoked), left.foreign, left.rules) == (set(right.revoked), right.foreign, right.rules)
    assert (left.digest() == right.digest()) == same


@given(histories())
def test_digest_depends_on_the_sets_not_the_path(history):
    final = replay(history)
    rebuilt = RevokedSet("s")
    rebuilt.apply(delta(0, added=BitMap64(final.revoked), foreign_added=frozenset(final.foreign),
                        rules_added=frozenset(final.rules)))
    assert rebuilt.digest() == final.digest()


def test_digest_tells_apart_sets_of_equal_size_and_sum():
    # The count + sum digest before 6c496a3 collided here.
    left, right = RevokedSet("s"), RevokedSet("s")
    left.apply(delta(0, added=bm(1, 4)))
    right.apply(delta(0, added=bm(2, 3)))
    assert left.digest() != right.digest()
    far = 1 << DIGEST_BITS
    left.apply(delta(1, added=bm(far + 1, 2 * far - 1)))
    right.apply(delta(1, added=bm(far + 2, 2 * far - 2)))
    right.apply(delta(2, removed=bm(2, 3, far + 2, 2 * far - 2), added=bm(1, 4, far + 1, 2 * far - 1)))
    assert left.digest() == right.digest()


def test_digest_is_fixed_size_and_stable_between_calls():
    rs = RevokedSet("s")
    empty = rs.digest()
    assert len(empty) == 40
    rs.apply(delta(0, added=bm(MASK, 5), foreign_added=frozenset(FOREIGN[:2])))
    first = rs.digest()
    assert rs.digest() == first != empty
    rs.apply(delta(1, removed=bm(MASK, 5), foreign_removed=frozenset(FOREIGN[:2])))
    assert rs.digest() == empty


# ---------------------------------------------------------- cut-off rules


def test_cut_off_rules():
    rs = RevokedSet("s")
    assert not rs.cut_off("https://idp", "alice", "web", 0)  # no rules: nothing is cut off
    rs.apply(delta(0, rules_added=frozenset({(SUBJECT, "alice", 100), (SUBJECT, "alice", 200)})))
    assert rs.cut_off("", "alice", "", 199) and not rs.cut_off("", "alice", "", 200)  # the later rule holds
    assert not rs.cut_off("", "bob", "", 10)
    assert not rs.cut_off("", "", "", 10)  # an empty subject matches no subject rule
    assert rs.cut_off("", "alice", "", 0)  # issued_at unknown: fails closed
    rs.apply(delta(1, rules_added=frozenset({(CLIENT, "web", 300), (ALL, "", 50)})))
    assert rs.cut_off("", "bob", "web", 299) and rs.cut_off("x", "", "", 49) and not rs.cut_off("x", "", "", 50)
    rs.apply(delta(2, rules_removed=frozenset({(SUBJECT, "alice", 200), (CLIENT, "web", 300)})))
    assert not rs.cut_off("", "alice", "web", 150) and rs.cut_off("", "alice", "web", 99)
    before = rs.digest()
    rs.apply(delta(3, rules_added=frozenset({(ISSUER, "https://idp", 500)}),
                   rules_removed=frozenset({(ISSUER, "https://idp", 500)})))  # removed wins, like serials
    assert rs.digest() == before and not rs.cut_off("https://idp", "", "", 60)


def test_rules_are_part_of_the_digest_and_of_load():
    rs = RevokedSet("s")
    rs.apply(delta(0, added=bm(1)))
    plain = rs.digest()
    rs.apply(delta(1, rules_added=frozenset({(SUBJECT, "alice", 100)})))
    assert rs.digest() != plain
    assert rs.digest() == fresh_digest({1}, set(), {(SUBJECT, "alice", 100)})
    assert fresh_digest({1}, set(), {(SUBJECT, "alice", 101)}) != rs.digest()
    assert fresh_digest({1}, set(), {(CLIENT, "alice", 100)}) != rs.digest()


@settings(max_examples=200)
@given(st.frozensets(st.sampled_from(SERIALS + [2**16 - 1, 2**16, 2**17 + 3, MASK - 2**20]), max_size=10),
       st.sampled_from([1, 12, 16, DIGEST_BITS]))
def test_split_yields_every_range_once_in_order(values, bits):
    bitmap = BitMap64(values)
    parts = list(split(bitmap, bits))
    expected: dict[int, set[int]] = {}
    for v in values:
        expected.setdefault(v >> bits, set()).add(v)
    assert [(n, set(part)) for n, part in parts] == sorted(expected.items())


def test_span_reaches_the_top_of_the_64_bit_space():
    top = span(MASK - 2, 2**64)
    assert set(top) == {MASK - 2, MASK - 1, MASK}
    assert set(span(5, 8)) == {5, 6, 7}


# ----------------------------------------------------------- state machine


class RevokedSetMachine(RuleBasedStateMachine):
    """A RevokedSet against two Python sets, a counter and a max."""

    applied = Bundle("applied")

    def __init__(self) -> None:
        super().__init__()
        self.rs = RevokedSet("store")
        self.seq = 0
        self.revoked: set[int] = set()
        self.foreign: set[int] = set()
        self.registered_through = 0
        self.rules: set = set()

    def _model_apply(self, d: Delta) -> None:
        self.revoked = (self.revoked | set(d.added)) - set(d.removed)
        self.foreign = (self.foreign | d.foreign_added) - d.foreign_removed
        self.rules = (self.rules | d.rules_added) - d.rules_removed
        self.registered_through = max(self.registered_through, d.registered_through)
        self.seq = d.seq

    @rule(target=applied, data=st.data())
    def apply(self, data):
        d = data.draw(deltas(self.seq))
        assert self.rs.apply(d) is True
        self._model_apply(d)
        return d

    @rule(target=applied, data=st.data())
    def apply_merged(self, data):
        first = data.draw(deltas(self.seq))
        second = data.draw(deltas(first.seq))
        assert self.rs.apply(first.merge(second)) is True
        self._model_apply(first)
        self._model_apply(second)
        return second

    @rule(old=applied)
    def reapply(self, old):
        assert self.rs.apply(old) is False

    @rule(data=st.data())
    def apply_with_gap(self, data):
        prev = data.draw(st.integers(min_value=0, max_value=self.seq + 5).filter(lambda p: p != self.seq))
        seq = data.draw(st.integers(min_value=max(prev, self.seq) + 1, max_value=self.seq + 8))
        d = Delta(prev_seq=prev, seq=seq, added=bm(1, 2), foreign_added=frozenset({3}))
        with pytest.raises(SequenceGap):
            self.rs.apply(d)

    @rule()
    def reload_from_own_snapshot(self):
        rs = self.rs
        rs.load(seq=rs.seq, revoked=rs.revoked, foreign=set(rs.foreign),
                registered_through=rs.registered_through, rules=set(rs.rules))

    @rule()
    def copy_and_continue_with_the_copy(self):
        self.rs = self.rs.copy()

    @precondition(lambda self: self.seq > 0)
    @rule(data=st.data())
    def replica_from_snapshot_follows(self, data):
        # A replica loaded from this set's snapshot agrees with it, and stays
        # in agreement after both take the same next delta.
        rs = self.rs
        replica = RevokedSet("store")
        replica.load(seq=rs.seq, revoked=rs.revoked, foreign=set(rs.foreign),
                     registered_through=rs.registered_through, rules=set(rs.rules))
        d = data.draw(deltas(self.seq))
        assert replica.apply(d) and rs.apply(d)
        self._model_apply(d)
        assert snapshot(replica) == snapshot(rs)

    @invariant()
    def sets_agree(self):
        assert self.rs.seq == self.seq
        assert set(self.rs.revoked) == self.revoked
        assert self.rs.foreign == self.foreign
        assert self.rs.cardinality == len(self.revoked)
        assert self.rs.registered_through == self.registered_through
        for serial in SERIALS:
            assert self.rs.is_revoked(serial) == (serial in self.revoked)
        for key in FOREIGN:
            assert self.rs.is_foreign_revoked(key) == (key in self.foreign)

    @invariant()
    def rules_agree(self):
        assert self.rs.rules == self.rules
        for claims in CLAIMS:
            assert self.rs.cut_off(*claims) == model_cut_off(self.rules, *claims), claims

    @invariant()
    def digest_agrees(self):
        assert self.rs.digest() == fresh_digest(self.revoked, self.foreign, self.rules)


RevokedSetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestRevokedSetMachine = RevokedSetMachine.TestCase


def test_copy_is_independent_and_equal():
    original = RevokedSet("s")
    original.apply(delta(0, added=bm(1, 2, 3), foreign_added=frozenset({7})))
    twin = original.copy()
    assert (twin.seq, twin.store_id, twin.digest()) == (original.seq, original.store_id, original.digest())
    step = delta(1, added=bm(9), foreign_removed=frozenset({7}))
    twin.apply(step)
    assert set(original.revoked) == {1, 2, 3} and original.foreign == {7}
    assert twin.digest() != original.digest()
    original.apply(step)
    assert twin.digest() == original.digest()


def test_a_chained_delta_is_stored_as_it_is_sent():
    delta = Delta(prev_seq=4, seq=5, added=BitMap64([7, 9]), foreign_added=frozenset({3, 2**63}),
                  rules_added=frozenset({(1, "alice", 100)}), time=1234)
    previous = b"\x01" * 16
    with_history, wire = chained(previous, delta)
    assert with_history == dataclasses.replace(delta, history=with_history.history)
    assert wire == delta_to_proto(with_history).SerializeToString()
    assert delta_from_proto(pb.Delta.FromString(wire)) == with_history
    body = delta_to_proto(delta).SerializeToString(deterministic=True)  # no history yet
    assert with_history.history == hashlib.blake2b(previous + body, digest_size=16).digest()
