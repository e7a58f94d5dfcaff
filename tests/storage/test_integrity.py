"""A damaged data directory is refused at start, with what is wrong and how to recover.

Real server processes on real LMDB files, damaged the way disks and people
damage them: a bit flipped in the file where a revoked-set chunk (or an
expiry block) lies, a file cut short, a value that was never a bitmap.
"""

import pathlib
import signal
import subprocess
import sys

import lmdb
import pytest
from recallclient import RecallClient, TokenSpec

from recallcore.storage import lmdb_checks

from ..support import STARTUP_TIMEOUT, ServerProcess


@pytest.fixture
def store(data_dir) -> pathlib.Path:
    """A data directory with 100 tokens, the even ones up to 50 revoked; the server stopped."""
    server = ServerProcess(data_dir)
    try:
        with RecallClient(server.address) as client:
            client.register([TokenSpec(f"user-{i}", "web") for i in range(100)])
            client.revoke(serials=list(range(2, 51, 2)), reason="leak")
    finally:
        assert server.terminate() == 0
        server.close()
    return data_dir


def serve(data_dir: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recallcore", "serve", "--data-dir", str(data_dir),
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT)


def values(data_dir: pathlib.Path, table: str) -> dict[bytes, bytes]:
    env = lmdb.open(str(data_dir), max_dbs=32, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor(db=env.open_db(table.encode(), txn=txn)).iternext())
    finally:
        env.close()


def flip_a_bit_of(data_dir: pathlib.Path, value: bytes) -> None:
    """Flip one bit in the middle of every copy of `value` in data.mdb (old copies sit in free pages)."""
    path = data_dir / "data.mdb"
    raw = bytearray(path.read_bytes())
    start, found = 0, 0
    while (at := raw.find(value, start)) >= 0:
        raw[at + len(value) // 2] ^= 0x10
        start, found = at + len(value), found + 1
    assert found, "the value is not in the file"
    path.write_bytes(bytes(raw))


def assert_refused(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr)  # not -SIGBUS, not serving
    assert "listening" not in done.stdout
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("recallcore: "), done.stderr
    for phrase in (*phrases, "restore the data directory from a backup"):
        assert phrase in line, line
    assert "Traceback" not in done.stderr


def test_a_flipped_bit_in_a_revoked_chunk_is_refused_not_served_as_active(store):
    (chunk,) = values(store, "revoked").values()
    flip_a_bit_of(store, chunk)
    assert_refused(serve(store), "table 'revoked'", "does not match its checksum")


def test_a_flipped_bit_in_an_expiry_block_is_refused(store):
    (block,) = values(store, "exp").values()
    flip_a_bit_of(store, block[:64])  # the first 16 expiries
    assert_refused(serve(store), "table 'exp'", "checksum")


def test_a_truncated_data_file_is_refused_without_a_crash(store):
    env = lmdb.open(str(store), max_dbs=32, readonly=True, lock=False)
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    with open(store / "data.mdb", "r+b") as f:
        f.truncate(needed - 8 * 4096)
    done = serve(store)
    assert done.returncode != -signal.SIGBUS
    assert_refused(done, "is truncated", "data.mdb")


def test_a_chunk_that_is_no_bitmap_is_refused_naming_it(store):
    env = lmdb.open(str(store), max_dbs=32)
    with env.begin(write=True) as txn:
        revoked, sums = env.open_db(b"revoked", txn=txn), env.open_db(b"sums", txn=txn)
        key = next(iter(txn.cursor(db=revoked).iternext(values=False)))
        garbage = b"\x01garbled\x00chunk"
        txn.put(key, garbage, db=revoked)
        txn.put(lmdb_checks.sum_key("revoked", key), lmdb_checks.checksum(garbage), db=sums)  # a bug's write
    env.close()
    assert_refused(serve(store), "table 'revoked'", "not a bitmap")


def test_an_intact_store_still_starts_and_answers(store):
    server = ServerProcess(store)
    try:
        with RecallClient(server.address) as client:
            assert client.check(2).state.name == "REVOKED" and client.check(3).state.name == "ACTIVE"
    finally:
        server.close()
