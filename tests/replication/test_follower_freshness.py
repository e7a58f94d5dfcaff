"""A follower answers only while its primary's vouch is fresh, and is back soon after a cut.

Real primaries and followers (ServerThreads on 127.0.0.1:0, or processes
where a process is paused or killed), a TCP proxy that freezes the link
between them, and clocks skewed on purpose: the node's stamp clock
(`Node.wall_ns`) is the one seam used.
"""

import dataclasses
import logging
import socket
import time

import grpc
import pytest
from recallclient import RecallClient, RecallError, Replica, TokenState

from recallcore.settings import Settings

from ..support import FreezableProxy, ServerProcess, free_address, health, until

HEARTBEAT = 0.05
MAX_STALENESS = 1.0
WAIT = 30.0  # deadline of every wait; never reached when things work


def follower_settings(tmp_path, primary: str, **fields) -> Settings:
    return Settings(**{"data_dir": tmp_path / "follower", "listen": "127.0.0.1:0", "follow": primary,
                       "heartbeat_interval": HEARTBEAT, "max_staleness": MAX_STALENESS, **fields})


@pytest.fixture
def primary(servers, settings):
    return servers.start(dataclasses.replace(settings, heartbeat_interval=HEARTBEAT))


def check_code(client: RecallClient, serial: int) -> str:
    try:
        return client.check(serial).state.name
    except RecallError as err:
        return err.code.name


def test_a_follower_cut_off_answers_unavailable_reports_not_serving_and_recovers(servers, tmp_path, primary):
    proxy = FreezableProxy(primary.address)
    try:
        follower = servers.start(follower_settings(tmp_path, proxy.address))
        with RecallClient(primary.address) as p, RecallClient(follower.address) as f, \
                Replica(follower.address, max_staleness=MAX_STALENESS) as replica:
            token = p.register_one("alice", "web")
            assert f.check(token.serial, min_seq=p.stats().seq).state == TokenState.ACTIVE
            until(lambda: health(follower.address) == "SERVING", what="SERVING")
            until(lambda: not replica.is_revoked(token.serial), what="a fresh replica")

            proxy.freeze()
            seq = p.revoke(serials=[token.serial], reason="leaked").seq
            until(lambda: check_code(f, token.serial) == "UNAVAILABLE", what="UNAVAILABLE")
            with pytest.raises(RecallError) as failure:
                f.check(token.serial)
            assert "last vouched" in failure.value.details and "max_staleness 1 s" in failure.value.details
            assert f.stats().staleness > MAX_STALENESS
            for call in (lambda: f.check_batch([token.serial]), lambda: f.introspect(token.serial)):
                with pytest.raises(RecallError) as failure:
                    call()
                assert failure.value.code == grpc.StatusCode.UNAVAILABLE
            until(lambda: health(follower.address) == "NOT_SERVING", what="NOT_SERVING")
            assert health(follower.address, "") == "NOT_SERVING"
            # Its own subscribers are no longer vouched for: the replica fails closed.
            until(lambda: replica.is_revoked(token.serial + 1000), what="the replica failing closed")
            assert replica.staleness > MAX_STALENESS

            proxy.thaw()
            # What waited in the frozen link is stamped with when it was sent: the
            # follower applies it, and answers once a fresh vouch follows.
            until(lambda: check_code(f, token.serial) == "REVOKED", what="REVOKED")
            assert f.stats().seq >= seq
            until(lambda: health(follower.address) == "SERVING", what="SERVING again")
            assert f.stats().staleness < MAX_STALENESS
    finally:
        proxy.close()


def count_attempts(address: str, seconds: float) -> int:
    """Stand in for a broken primary at `address` for `seconds`: accept each
    connection and close it at once; return how many were tried."""
    host, _, port = address.rpartition(":")
    attempts = 0
    with socket.create_server((host, int(port))) as listener:
        listener.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            attempts += 1
            conn.close()
    return attempts


def test_a_follower_is_current_soon_after_its_primary_returns_from_a_long_outage(servers, tmp_path, data_dir):
    """grpc's default reconnect backoff grows past 6 s within this outage (one attempt in its
    last 6 s); the follower keeps trying about once a second, and catches up at once."""
    address = free_address()
    first = ServerProcess(data_dir, "--heartbeat-interval", str(HEARTBEAT), listen=address)
    try:
        with RecallClient(address) as p:
            token = p.register_one("alice", "web")
        follower = servers.start(follower_settings(tmp_path, address, max_staleness=30.0))
        with RecallClient(follower.address, timeout=3.0) as f:
            assert f.check(token.serial, min_seq=1).state == TokenState.ACTIVE
            first.kill()
            time.sleep(6)  # the outage's first half: nothing listens
            assert count_attempts(address, 6.0) >= 4  # its second half: a primary that fails every attempt
            second = ServerProcess(data_dir, "--heartbeat-interval", str(HEARTBEAT), listen=address)
            try:
                with RecallClient(address) as p:
                    seq = p.revoke(serials=[token.serial]).seq
                returned = time.monotonic()
                # min_seq waits on the follower for the revocation, bounded by the client's 3 s deadline.
                assert f.check(token.serial, min_seq=seq).state == TokenState.REVOKED, \
                    "the follower did not catch up within 3 s of its primary's return"
                assert time.monotonic() - returned < 3.0
            finally:
                second.close()
    finally:
        first.close()


@pytest.mark.parametrize("offset", [0.3, -0.3])
def test_a_primary_clock_off_by_less_than_the_skew_still_vouches(primary, tmp_path, servers, offset):
    primary.engine.wall_ns = lambda: time.time_ns() + int(offset * 1e9)
    follower = servers.start(follower_settings(tmp_path, primary.address))
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f, \
            Replica(primary.address, max_staleness=MAX_STALENESS, clock_skew=0.5) as replica:
        token = p.register_one("alice", "web")
        assert f.check(token.serial, min_seq=p.stats().seq).state == TokenState.ACTIVE
        until(lambda: not replica.is_revoked(token.serial), what="a fresh replica")
        assert replica.staleness < MAX_STALENESS
        assert f.stats().staleness < MAX_STALENESS


@pytest.mark.parametrize("offset", [3.0, -3.0])
def test_a_primary_clock_off_by_more_than_the_skew_is_reported_not_trusted(
        primary, tmp_path, servers, offset, caplog):
    primary.engine.wall_ns = lambda: time.time_ns() + int(offset * 1e9)
    caplog.set_level(logging.WARNING)
    follower = servers.start(follower_settings(tmp_path, primary.address))
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f, \
            Replica(primary.address, max_staleness=MAX_STALENESS, clock_skew=0.5) as replica:
        token = p.register_one("alice", "web")
        assert replica.wait_for(p.stats().seq, WAIT)  # it follows the changes...
        until(lambda: "ignored the server's vouch" in caplog.text, what="the replica's report")
        until(lambda: "ignored a vouch of primary" in caplog.text, what="the follower's report")
        assert replica.is_revoked(token.serial)  # ...but never vouches: it fails closed
        assert replica.staleness == float("inf")
        assert check_code(f, token.serial) == "UNAVAILABLE"
    assert ("ahead" if offset > 0 else "behind") in caplog.text
