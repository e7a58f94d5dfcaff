"""Two copies of one store that went their own ways are told apart at the first resume.

A restored backup or a copied disk keeps the store_id, so a subscriber that
followed the original and resumes on the copy used to apply the copy's
changes on top of the original's state and report itself current. Every
change now carries the store's history hash, a resume presents the hash at
its seq, and a mismatch gets a Reset ("diverged") and a snapshot at once.
Real server processes on copied LMDB directories; a replica on the primary's
address and one behind a follower.
"""

import shutil

from recallclient import RecallClient, Replica, TokenSpec, TokenState

from recallcore.settings import Settings

from ..support import ServerProcess, free_address, until

HEARTBEAT = "0.05"
WAIT = 30.0


class Outcomes:
    def __init__(self) -> None:
        self.seen = []

    def __call__(self, outcome) -> None:
        self.seen.append(outcome)

    def resets(self) -> list[str]:
        return [o.reason for o in self.seen if o.kind == "reset"]


def test_a_subscriber_of_the_original_is_reset_by_a_diverged_copy(tmp_path, servers):
    original, copy = tmp_path / "original", tmp_path / "copy"
    address = free_address()
    a = ServerProcess(original, "--heartbeat-interval", HEARTBEAT, listen=address)
    with RecallClient(address) as client:
        client.register([TokenSpec(f"user-{i}", "web") for i in range(10)])
        assert client.revoke(serials=[5]).seq == 2
    assert a.terminate() == 0
    a.close()
    shutil.copytree(original, copy)  # a backup, taken at seq 2

    a = ServerProcess(original, "--heartbeat-interval", HEARTBEAT, listen=address)
    b = None
    direct, behind = Outcomes(), Outcomes()
    try:
        with RecallClient(address) as client:
            assert client.revoke(serials=[1, 2], reason="original").seq == 3
        follower = servers.start(Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=address,
                                          heartbeat_interval=float(HEARTBEAT)))
        with Replica(address, on_change=direct) as r1, Replica(follower.address, on_change=behind) as r2:
            assert r1.wait_for(3, WAIT) and r2.wait_for(3, WAIT)
            assert r1.is_revoked(1) and r2.is_revoked(1)

            # The original goes away; the copy, which went its own way, takes its place.
            assert a.terminate() == 0
            a.close()
            elsewhere = free_address()
            b = ServerProcess(copy, "--heartbeat-interval", HEARTBEAT, listen=elsewhere)
            with RecallClient(elsewhere) as client:
                assert client.revoke(serials=[7], reason="copy").seq == 3
                assert client.revoke(serials=[8], reason="copy").seq == 4
            assert b.terminate() == 0
            b.close()
            b = ServerProcess(copy, "--heartbeat-interval", HEARTBEAT, listen=address)

            for replica, outcomes in ((r1, direct), (r2, behind)):
                until(lambda outcomes=outcomes: outcomes.resets(), "a reset")
                until(lambda replica=replica: replica.seq == 4 and not replica.is_revoked(1), "the copy's state")
                assert [replica.is_revoked(s) for s in (1, 2, 5, 7, 8)] == [False, False, True, True, True]
            assert direct.resets()[0].startswith("diverged"), direct.resets()
            # The follower was reset by its primary the same way, and reset its own subscriber.
            assert any(r.startswith("upstream reset") for r in behind.resets()), behind.resets()
            # The copy's change 4 was never applied on top of the original's 3: it came with a snapshot.
            assert not any(o.kind == "applied" and o.seq == 4 for o in direct.seen + behind.seen)
            with RecallClient(follower.address) as f:
                assert f.check(1, min_seq=4).state == TokenState.ACTIVE
    finally:
        if b is not None:
            b.close()
        a.close()
