"""`recallcore migrate --from DIR --to CONNINFO`: an LMDB store moved into a cluster database.

A real LMDB server is filled, stopped and copied; a node started on the
database must answer as the old server did, keep its store identity and
sequence and its Shared Signals state (the SETs it applied, the receivers'
cursors), and a replica that followed the old server must resume on the
node by sequence, without a reset.
"""

import time

from recallclient import RecallClient
from recallclient.types import JtiRef, TokenSpec, TokenType

from recallcore import cli
from recallcore.core.audit import AuditQuery
from recallcore.core.operations import CUSTOM_JTI
from recallcore.core.signals import Recall
from recallcore.settings import Settings

from ..history import ServerLog, Subscriber, check_history, server_state

IDP = "https://idp.example"


def fill(client: RecallClient) -> list[int]:
    """Registrations, revocations, a rotation, a cut-off rule and a foreign revocation; the serials."""
    serials = [client.register_one(f"user{i % 3}", "web", ttl=3600).serial for i in range(6)]
    custom = client.register_one("carol", "app", issuer=IDP, jti="carol-1", ttl=3600).serial
    refresh = client.register([TokenSpec("dave", "app", type=TokenType.REFRESH, family="fam-d",
                                         expires_at=0)]).tokens[0].serial
    client.revoke(serials=[serials[0]], reason="leaked")
    client.revoke(subject="user1", reason="password reset")
    client.revoke(tokens=[(IDP, "carol-1")], reason="by jti")
    client.revoke(tokens=[(IDP, "never-registered")], reason="foreign")
    successor = client.rotate(refresh).successor.serial
    client.cutoff("client", "legacy", reason="retired client")
    return serials + [custom, refresh, successor]


def caller_chosen(server) -> list[int]:
    """The serials the store indexes as registered under a caller-chosen jti."""
    def read():
        with server.engine.store.read() as txn:
            return list(txn.index(*CUSTOM_JTI))
    return server.run(read)


SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
SETS = (("set-1", JtiRef(IDP, "by-a-set")), ("set-2", None))  # one recalls a token, one recalls nothing


def apply_sets(srv) -> list:
    """The SignalResults of applying SETS on the server `srv` (a ServerThread)."""
    now = int(time.time())
    return [srv.call(srv.engine.signal(IDP, jti, Recall(SESSION_REVOKED, token=token),
                                       {"transmitter": "idp", "jti": jti}, issued_at=now))
            for jti, token in SETS]


def answers(client: RecallClient, serials: list[int]) -> list[tuple]:
    out = [(s, client.check(s).state, client.check(s).reason) for s in serials]
    out.append(client.check(issuer=IDP, jti="never-registered").state)
    return out


def test_a_migrated_store_answers_as_before_and_its_replicas_resume_without_a_reset(tmp_path, postgres, servers):
    old = servers.start(Settings(data_dir=tmp_path / "lmdb", listen="127.0.0.1:0", sweep_interval=3600))
    target = [old.address]
    with Subscriber("replica", lambda: target[0]) as sub:  # from the empty store: its snapshot holds no rule
        with RecallClient(old.address) as client:
            serials = fill(client)
            applied = apply_sets(old)
            assert [r.duplicate for r in applied] == [False, False] and applied[0].count == 1
            assert old.call(old.engine.advance("receiver-a", applied[0].seq)) == applied[0].seq
            before = answers(client, serials)
            old.call(old.server.presented.flush())  # the revoked tokens just checked: recorded now, not at the stop
            stats = client.stats()
        trail = old.call(old.engine.audit(AuditQuery()))
        chosen = caller_chosen(old)
        assert chosen == [serials[6]]  # carol-1 alone
        sub.wait_vouched(stats.seq)
        sub.pause()
        servers.stop(old)

        conninfo = postgres.create_database()
        assert cli.main(["migrate", "--from", str(tmp_path / "lmdb"), "--to", conninfo]) == 0
        assert cli.main(["migrate", "--from", str(tmp_path / "lmdb"), "--to", conninfo]) == 1  # not twice

        node = servers.start(Settings(store=conninfo, listen="127.0.0.1:0", sweep_interval=3600))
        target[0] = node.address
        sub.resume()
        with RecallClient(node.address) as client:
            moved = client.stats()
            assert (moved.store_id, moved.seq, moved.registered) == (stats.store_id, stats.seq, stats.registered)
            assert caller_chosen(node) == chosen
            assert answers(client, serials) == before
            # The Shared Signals state came along: the SETs already applied are not applied
            # again (each answered with the change it made), and the receiver's cursor stands.
            again = apply_sets(node)
            assert [(r.duplicate, r.count) for r in again] == [(True, 0), (True, 0)]
            assert again[0].seq == applied[0].seq
            assert node.call(node.engine.cursor("receiver-a")) == applied[0].seq
            assert node.call(node.engine.cursor("receiver-b")) == 0
            assert client.stats().seq == stats.seq  # and nothing was written for them
            after = client.revoke(serials=[serials[2]], reason="after the move")
            assert after.seq == stats.seq + 1
            again = client.register_one("erin", "web", ttl=3600)
            assert again.serial == stats.registered + 1  # serials go on from where they were
        assert node.call(node.engine.audit(AuditQuery()))[: len(trail)] == trail
        final = server_state(node)
        sub.wait_vouched(final.seq)
    assert not sub.resyncs, sub.resyncs
    assert len(sub.streams) == 2 and sub.streams[1].request.after_seq == stats.seq  # resumed by seq
    check_history(sub.streams, ServerLog().capture(node.engine), final=final)  # the log came along
