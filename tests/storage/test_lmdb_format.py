"""A store written by an earlier release opens and answers as it did.

tests/fixtures/store-v1 holds an LMDB store (compacted copy) written by the
release before the storage seam, and expected.json what that release
answered from it: states by serial and by (issuer, jti), an introspection,
the audit trail and a token's trace, the cut-off rules. The test opens a
copy with today's code at the fixture's time and asks the same questions,
then writes on top of it. Opening it upgrades it to format 2 (checksums).
"""

import asyncio
import json
import pathlib
import shutil

import lmdb
import pytest
from recallclient.types import JtiRef, TokenSpec, TokenState, TokenType

from recallcore.core.audit import AuditQuery
from recallcore.core.model import Selector
from recallcore.engine import Engine
from recallcore.settings import Settings

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "store-v1"
IDP = "https://idp.example"


@pytest.fixture
def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def copied(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "data"
    target.mkdir()
    shutil.copy(FIXTURE / "data.mdb", target / "data.mdb")
    return target


def test_a_store_of_the_previous_format_opens_and_answers_as_before(copied, expected):
    now = expected["now"]

    async def scenario():
        engine = Engine(Settings(data_dir=copied, sweep_interval=3600), clock=lambda: now)
        await engine.start()
        try:
            assert engine.store.store_id == expected["store_id"]
            assert engine.state.seq == expected["seq"]
            assert engine.state.revocations.registered_through == expected["registered_through"]
            assert sorted(list(r) for r in engine.state.revocations.rules) == expected["rules"]
            for serial, state in expected["states"].items():
                assert (await engine.check(int(serial))).state == state, serial
            refs = {"foreign": JtiRef(IDP, "x-foreign"), "bob": JtiRef(IDP, "bob-1"), "none": JtiRef(IDP, "nope")}
            for name, state in expected["ref_states"].items():
                assert (await engine.check(refs[name])).state == state, name
            intro = await engine.introspect(1)
            assert {k: intro[k] for k in expected["introspect_1"]} == expected["introspect_1"]
            assert [a["kind"] for a in await engine.audit(AuditQuery())] == expected["audit_kinds"]
            assert [a["kind"] for a in await engine.audit(AuditQuery(serial=1))] == expected["trace_1"]
            # The audit name index was built for the old records: alice registered at 1, revoked at 4.
            assert [a["seq"] for a in await engine.audit(AuditQuery(subject="alice"))] == [1, 4]
            assert [a["seq"] for a in await engine.audit(AuditQuery(subject="erin"))] == [1, 7]
            # The stored rotation fingerprint still recognises a retry.
            retry = await engine.rotate(5, TokenSpec("", "", type=TokenType.REFRESH), actor="t", request_id="req-1")
            assert retry.outcome == "RETRIED" and retry.successor.serial == expected["rotated_successor"]
            # And the store takes new writes on top of the old ones.
            added = await engine.register([TokenSpec("frank", "web", expires_at=now + 60)], "t")
            assert added.tokens[0].serial == expected["registered_through"] + 1
            revoked = await engine.revoke(Selector(subject="carol"), "gone", "t")
            assert revoked.count == 1 and revoked.seq == expected["seq"] + 2
            assert (await engine.check(3)).state == TokenState.REVOKED
        finally:
            await engine.close()

    asyncio.run(scenario())
    # It was upgraded to format 2 on the way: every checked value now has its checksum.
    env = lmdb.open(str(copied), max_dbs=32, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == b"recallcore/2"
            sums = txn.stat(env.open_db(b"sums", txn=txn))["entries"]
            checked = sum(txn.stat(env.open_db(t.encode(), txn=txn))["entries"] for t in ("revoked", "rotated", "exp"))
            assert sums == checked > 0
    finally:
        env.close()
