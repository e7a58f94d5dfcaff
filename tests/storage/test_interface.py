"""The storage interface's contract, on every engine: LMDB, PostgreSQL and the tests' in-memory store.

A third engine joins by adding itself to the `store` fixture: these tests,
and the core's operation tests (tests/core), then run on it too.
"""

import threading

import numpy as np
import pytest
from pyroaring import BitMap64
from recallclient.revoked_set import Delta
from recallclient.types import TokenSpec, TokenType

from recallcore.storage.base import Store, StoreFull
from recallcore.storage.lmdb import LmdbStore

from ..memory_store import MemoryStore

SMALL = 1 << 20


def lmdb_store(path, map_size=4 * SMALL, max_map_size=4 * SMALL) -> LmdbStore:
    return LmdbStore(path, map_size=map_size, max_map_size=max_map_size)


@pytest.fixture(params=["lmdb", "memory", "postgresql"])
def store(request, tmp_path):
    if request.param == "postgresql":
        from recallcore.storage.postgresql import PostgresStore

        opened = PostgresStore(request.getfixturevalue("pg_database"))
    else:
        opened = lmdb_store(tmp_path / "data") if request.param == "lmdb" else MemoryStore().open()
    yield opened
    opened.close()


def spec(serial: int, **fields) -> TokenSpec:
    return TokenSpec(**{"subject": f"s{serial}", "client_id": "web", "issuer": "iss", "jti": f"j{serial}",
                        "scopes": ("read", "write"), "type": TokenType.REFRESH, "issued_at": 100,
                        "expires_at": 200, "origin": "test", "family": "", **fields})


def change(seq: int, time: int = 1000, **fields) -> Delta:
    return Delta(prev_seq=seq - 1, seq=seq, time=time, **fields)


def test_indexes_changed_together_keep_what_each_held(store: Store):
    """update_indexes (a registration's many subjects at once) merges with the stored chunks of
    each index, across chunks, as update_index does one index at a time."""
    with store.write() as txn:
        txn.update_index("subject", "alice", BitMap64([1, 70_000]))
    many = [("subject", f"user-{i}", BitMap64([10 + i, 140_000 + i])) for i in range(50)]
    with store.write() as txn:
        txn.update_indexes([("subject", "alice", BitMap64([2, 200_000])), *many, ("client_id", "web", BitMap64([3]))])
    with store.read() as txn:
        assert txn.index("subject", "alice") == BitMap64([1, 2, 70_000, 200_000])
        assert all(txn.index(kind, name) == serials for kind, name, serials in many)
        assert txn.index("client_id", "web") == BitMap64([3])
        assert txn.index_among("subject", "user-7", BitMap64([17, 18, 140_007])) == BitMap64([17, 140_007])


def test_what_a_write_stores_reads_back_the_same(store: Store):
    with store.write() as txn:
        txn.set_head(3, b"h%d" % 3)
        txn.set_registered_through(70_000)
        for serial in (1, 2, 70_000):
            txn.put_record(serial, spec(serial))
            txn.put_jti("iss", f"j{serial}", serial)
        txn.update_record(2, spec(2, family="fam"))
        txn.update_index("subject", "alice", BitMap64([1, 2, 70_000]))
        txn.update_index("subject", "alice", BitMap64(), BitMap64([2]))
        txn.update_index("custom_jti", "", BitMap64([2]))
        txn.update_revoked(BitMap64([1, 70_000]))
        txn.update_rotated(BitMap64([2]))
        ids = np.array([1, 2, 70_000], dtype=np.uint64)
        txn.set_expiries(ids, np.array([200, 300, 400], dtype=np.uint32))
        txn.set_issue_times(ids, np.array([10, 20, 30], dtype=np.uint32))
        txn.put_issuance(1, 1)
        txn.put_issuance(70_000, 2)
        txn.put_revocations(BitMap64([1, 70_000]), 3)
        txn.put_rotation(2, 3, 150, 2, b"fp")
        txn.put_foreign(11, 500, 3)
        txn.put_foreign(12, 400, 3)
        txn.put_foreign(11, 600, 3)  # re-dated: due later
        txn.put_rule((1, "alice", 90), 3)
        for seq in (1, 2, 3):
            txn.put_change(change(seq, time=1000 + seq, added=BitMap64([seq])), {"seq": seq, "time": 1000 + seq})
    with store.read() as txn:
        assert (txn.head_seq(), txn.head_history(), txn.registered_through()) == (3, b"h3", 70_000)
        assert txn.record(1) == spec(1) and txn.record(2) == spec(2, family="fam") and txn.record(3) is None
        assert txn.serial_for("iss", "j70000") == 70_000 and txn.serial_for("iss", "nope") == 0
        assert txn.index("subject", "alice") == BitMap64([1, 70_000]) and txn.index("subject", "bob") == BitMap64()
        assert txn.index_among("subject", "alice", BitMap64([2, 70_000, 5])) == BitMap64([70_000])
        assert txn.index_among("custom_jti", "", BitMap64([1, 2])) == BitMap64([2])
        assert txn.revoked_serials() == BitMap64([1, 70_000]) and txn.rotated_serials() == BitMap64([2])
        expiries = txn.expiries()
        assert (expiries[1], expiries[2], expiries[70_000], expiries[3]) == (200, 300, 400, 0)
        assert txn.issue_times(np.array([70_000, 1, 5], dtype=np.uint64)).tolist() == [30, 10, 0]
        assert [txn.issued_by(s) for s in (1, 69_999, 70_000, 80_000)] == [1, 1, 2, 2]
        assert (txn.revoked_by(70_000), txn.revoked_by(2)) == (3, 0)
        assert txn.rotation(2) == (3, 150, 2, b"fp") and txn.rotation(1) is None
        assert txn.foreign(11) == (600, 3) and sorted(txn.foreign_keys()) == [11, 12]
        assert txn.foreign_due(600, 10) == [(400, 12), (600, 11)] and txn.foreign_due(500, 10) == [(400, 12)]
        assert txn.foreign_due(600, 1) == [(400, 12)]
        assert txn.rules() == [(1, "alice", 90)]
        assert txn.log_first() == 1 and txn.delta(2) == change(2, time=1002, added=BitMap64([2]))
        assert txn.delta(4) is None and txn.audit(3) == {"seq": 3, "time": 1003}
        assert [r["seq"] for r in txn.audit_after(1)] == [2, 3]


def test_deletes_and_compaction(store: Store):
    with store.write() as txn:
        txn.put_record(1, spec(1))
        txn.put_jti("iss", "j1", 1)
        txn.put_revocations(BitMap64([1]), 1)
        txn.put_rotation(1, 2, 0, 1, b"")
        txn.put_foreign(7, 50, 1)
        txn.put_rule((2, "web", 10), 1)
        txn.update_revoked(BitMap64([1, 2]))
        for seq in range(1, 6):
            txn.put_change(change(seq, time=seq), {"seq": seq, "time": seq})
    with store.write() as txn:
        txn.delete_record(1)
        txn.delete_jti("iss", "j1")
        txn.delete_revocation(1)
        txn.delete_rotation(1)
        txn.delete_foreign(7, 50)
        txn.delete_rule((2, "web", 10))
        txn.update_revoked(BitMap64(), BitMap64([1]))
        assert txn.compact_log(upto=4, before=3, limit=10) == 2  # seqs 1 and 2: older than time 3
        assert txn.compact_log(upto=4, before=100, limit=1) == 1  # the limit holds
        assert txn.compact_audit(before=3, limit=10) == 2
    with store.read() as txn:
        assert txn.record(1) is None and txn.serial_for("iss", "j1") == 0
        assert txn.revoked_by(1) == 0 and txn.rotation(1) is None and txn.foreign(7) is None
        assert txn.foreign_due(2**40, 10) == [] and txn.rules() == []
        assert txn.revoked_serials() == BitMap64([2])
        assert txn.log_first() == 4 and txn.delta(3) is None and txn.delta(4) is not None
        assert [r["seq"] for r in txn.audit_after(0)] == [3, 4, 5]


def test_a_write_that_raises_leaves_nothing_behind(store: Store):
    with store.write() as txn:
        txn.set_head(1, b"h%d" % 1)
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.set_head(2, b"h%d" % 2)
        txn.put_record(1, spec(1))
        txn.update_revoked(BitMap64([1]))
        raise RuntimeError("boom")
    with store.read() as txn:
        assert txn.head_seq() == 1 and txn.record(1) is None and not txn.revoked_serials()
    assert store.load().seq == 1


def test_a_reader_keeps_the_state_it_began_with_while_a_write_commits(store: Store):
    with store.write() as txn:
        txn.set_head(1, b"h%d" % 1)
    with store.read() as before:
        done = threading.Event()

        def write():
            with store.write() as txn:
                txn.set_head(2, b"h%d" % 2)
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert done.wait(10)
        writer.join()
        assert before.head_seq() == 1
    with store.read() as after:
        assert after.head_seq() == 2


def test_load_gives_the_mirror_of_what_is_stored(store: Store):
    with store.write() as txn:
        txn.set_head(2, b"h%d" % 2)
        txn.set_registered_through(3)
        txn.set_expiries(np.array([1, 2, 3], dtype=np.uint64), np.array([50, 60, 70], dtype=np.uint32))
        txn.update_revoked(BitMap64([2]))
        txn.update_rotated(BitMap64([3]))
        txn.put_foreign(99, 500, 1)
        txn.put_rule((4, "", 40), 2)
    mirror = store.load()
    assert (mirror.seq, mirror.revocations.registered_through, mirror.revocations.store_id) == (2, 3, store.store_id)
    assert mirror.revocations.history == b"h2"
    assert [int(s) for s in (mirror.state(1, 0), mirror.state(2, 0), mirror.state(3, 0), mirror.state(1, 55))] == [
        1, 2, 5, 3]  # ACTIVE, REVOKED, ROTATED, EXPIRED
    assert mirror.revocations.is_foreign_revoked(99) and mirror.revocations.rules == {(4, "", 40)}


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
def test_a_full_store_says_so_keeps_nothing_and_grows_up_to_its_limit(kind, tmp_path):
    if kind == "lmdb":  # ~12k records of ~150 bytes: more than 1 MiB, less than 4 MiB
        full = lmdb_store(tmp_path / "data", map_size=SMALL, max_map_size=4 * SMALL)
        entries = 12_000
    else:
        full = MemoryStore(capacity=1000, max_capacity=4000).open()
        entries = 1500
    try:
        def fill():
            with full.write() as txn:
                txn.set_head(1, b"h%d" % 1)
                for serial in range(1, entries + 1):
                    txn.put_record(serial, spec(serial, subject="x" * 64))

        with pytest.raises(StoreFull):
            fill()
        with full.read() as txn:
            assert txn.head_seq() == 0 and txn.record(1) is None
        for _ in range(2):  # 1 -> 2 -> 4 (MiB, or thousands of entries)
            assert full.grow()
            try:
                fill()
                break
            except StoreFull:
                continue
        with full.read() as txn:
            assert txn.head_seq() == 1 and txn.record(entries) is not None
        while full.grow():  # up to its limit, and no further
            pass
        assert full.sizes()[1] == 4 * (SMALL if kind == "lmdb" else 1000)
    finally:
        full.close()


def test_a_signal_is_kept_per_issuer_and_jti_and_only_when_its_transaction_commits(store: Store):
    with store.write() as txn:
        txn.put_signal("https://idp.example", "set-1", 7, 100)
        txn.put_signal("https://idp.example", "set-2", 0, 200)
        assert txn.signal("https://idp.example", "set-1") == 7  # the transaction sees its own write
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put_signal("https://idp.example", "set-3", 8, 300)
        raise RuntimeError("abort")
    with store.read() as txn:
        assert txn.signal("https://idp.example", "set-1") == 7
        assert txn.signal("https://idp.example", "set-2") == 0  # applied, changed nothing: still seen
        assert txn.signal("https://idp.example", "set-3") is None  # rolled back
        assert txn.signal("https://other.example", "set-1") is None  # jtis are per issuer


def test_signals_outlive_a_reopen_of_the_data_directory(tmp_path):
    store = lmdb_store(tmp_path / "data")
    with store.write() as txn:
        txn.put_signal("https://idp.example", "set-1", 3, 100)
    store.close()
    store = lmdb_store(tmp_path / "data")
    try:
        with store.read() as txn:
            assert txn.signal("https://idp.example", "set-1") == 3
    finally:
        store.close()


def test_a_receivers_cursor_reads_back_and_starts_at_zero(store: Store):
    with store.read() as txn:
        assert txn.cursor("rp-1") == 0
    with store.write() as txn:
        txn.put_cursor("rp-1", 12)
    with store.read() as txn:
        assert (txn.cursor("rp-1"), txn.cursor("rp-2")) == (12, 0)



def test_signals_are_compacted_oldest_first_by_their_issue_time(store: Store):
    with store.write() as txn:
        for i, iat in enumerate((300, 100, 200, 400)):
            txn.put_signal("iss", f"set-{i}", i, iat)
    with store.write() as txn:
        assert txn.compact_signals(before=350, limit=2) == 2  # iat 100 and 200
    with store.read() as txn:
        assert [txn.signal("iss", f"set-{i}") for i in range(4)] == [0, None, None, 3]
    with store.write() as txn:
        assert txn.compact_signals(before=350, limit=10) == 1
        assert txn.signal("iss", "set-0") is None and txn.signal("iss", "set-3") == 3


def test_lookups_announced_to_a_write_transaction_answer_as_any_other_and_see_its_writes(store: Store):
    with store.write() as txn:
        txn.expect_lookups([("iss", "a"), ("iss", "b")])
        assert txn.serial_for("iss", "a") == 0
        txn.put_jti("iss", "a", 1)
        assert txn.serial_for("iss", "a") == 1
    with store.write() as txn:
        txn.expect_lookups([("iss", "a"), ("iss", "b"), ("iss", "it's \\ 'quoted'"), ("iss", "a")])
        assert (txn.serial_for("iss", "a"), txn.serial_for("iss", "b")) == (1, 0)
        txn.put_jti("iss", "it's \\ 'quoted'", 3)
        txn.put_jti("iss", "b", 2)
        txn.delete_jti("iss", "a")
        assert (txn.serial_for("iss", "a"), txn.serial_for("iss", "b")) == (0, 2)
    with store.write() as txn:
        txn.expect_lookups([("iss", "it's \\ 'quoted'")])
        assert txn.serial_for("iss", "it's \\ 'quoted'") == 3
    with store.read() as txn:
        assert (txn.serial_for("iss", "a"), txn.serial_for("iss", "b")) == (0, 2)


def test_lookups_records_and_foreign_keys_by_the_thousand_answer_as_one_at_a_time(store: Store, monkeypatch):
    """What a revocation of thousands of jtis asks (an engine with round trips reads them in
    pages; small pages here, so that several are read)."""
    from recallcore.storage import postgresql

    monkeypatch.setattr(postgresql, "PREFETCH", 300)
    monkeypatch.setattr(postgresql, "LOOKUP_PAGE", 700)
    with store.write() as txn:
        for serial in range(1, 2001):
            txn.put_record(serial, spec(serial))
            if serial % 2 == 0:
                txn.put_jti("iss", f"j{serial}", serial)
        for key in range(1, 1501, 3):
            txn.put_foreign(key, 1000 + key, 7)
    refs = [("iss", f"j{serial}") for serial in range(1, 2501)]
    with store.write() as txn:
        txn.expect_lookups(refs)
        assert [txn.serial_for(*ref) for ref in refs] == [s if s <= 2000 and s % 2 == 0 else 0 for s in range(1, 2501)]
        txn.put_jti("iss", "j1", 1)  # the transaction's own writes are seen
        assert txn.serial_for("iss", "j1") == 1
        assert txn.records(range(1500, 2600)) == {s: spec(s) for s in range(1500, 2001)}
        assert txn.foreigns(range(1, 1600)) == {key: (1000 + key, 7) for key in range(1, 1501, 3)}
    with store.read() as txn:
        assert txn.records([2, 4000, 9]) == {2: spec(2), 9: spec(9)}
        assert txn.foreigns([1, 2, 2**64 - 1]) == {1: (1001, 7)}


def test_many_bitmap_changes_in_one_write_read_back_as_applied_in_order(store: Store):
    # A group commit changes the same chunks again and again (LMDB writes each
    # chunk once, at the end or before its table is read): every read inside
    # the transaction, and the committed state, must be the changes in order.
    rng = np.random.default_rng(7)
    want: set[int] = set()
    gone: set[int] = set()
    indexed: set[int] = set()
    with store.write() as txn:
        for step in range(60):
            add = {int(x) for x in rng.integers(1, 140_000, rng.integers(0, 6))}
            remove = {int(x) for x in rng.choice(sorted(want), min(len(want), 3), replace=False)} if want else set()
            if step % 7 == 3:
                remove |= add  # names a serial both ways: added, then removed
            elif step % 4 == 1 and gone:
                add |= set(sorted(gone)[:2])  # removed earlier in this transaction, added again
            txn.update_revoked(BitMap64(add), BitMap64(remove))
            gone = (gone | remove) - add
            want = (want | add) - remove
            txn.update_index("subject", "carol", BitMap64(add))
            indexed |= add
            if step % 5 == 0:
                assert set(txn.revoked_serials()) == want
                assert set(txn.index_among("subject", "carol", BitMap64(range(1, 140_000)))) == indexed
    with store.read() as txn:
        assert set(txn.revoked_serials()) == want
        assert set(txn.index("subject", "carol")) == indexed
