"""A node that was paused never vouches for state it missed while it was stopped.

Real processes: a primary (SIGKILLed and restarted on its data directory and
address while the other node is paused), a follower or a replica paused
with SIGSTOP for STALL seconds and resumed with SIGCONT. Right after the
resume, what the paused node says must be true: it is as stale as the
pause, it answers nothing ACTIVE it cannot vouch for, and a follower's own
subscribers hear no fresh vouch for the old sequence.
"""

import signal
import subprocess
import sys
import threading
import time

import grpc
from recallclient import RecallClient, RecallError, TokenSpec, TokenState
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from ..support import STARTUP_TIMEOUT, ServerProcess, free_address, until

STALL = 3.0
MAX_STALENESS = 2.0
HEARTBEAT = "0.2"
WAIT = 15.0


def quietly(call):
    try:
        return call()
    except RecallError as err:
        return err


def stall_and_revoke(paused: subprocess.Popen, primary: ServerProcess, data_dir, address: str) -> tuple:
    """SIGSTOP `paused`; a second later (its socket buffer fills with the primary's heartbeats)
    SIGKILL the primary, restart it, revoke serials 1..5 (seq 2); SIGCONT `paused` STALL s
    after it stopped. Returns (paused_at, resumed_at, new primary)."""
    paused.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    try:
        time.sleep(1.0)
        primary.kill()
        primary.close()
        primary = ServerProcess(data_dir, "--heartbeat-interval", HEARTBEAT, listen=address)
        with RecallClient(address) as p:
            assert p.revoke(serials=[1, 2, 3, 4, 5], reason="stolen").seq == 2
        time.sleep(max(0.0, paused_at + STALL - time.time()))  # the pause itself
    finally:
        paused.send_signal(signal.SIGCONT)
    return paused_at, time.time(), primary


def start_primary(tmp_path) -> tuple[str, ServerProcess]:
    address = free_address()
    primary = ServerProcess(tmp_path / "primary", "--heartbeat-interval", HEARTBEAT, listen=address)
    with RecallClient(address) as p:
        assert p.register([TokenSpec(f"user-{i}", "web") for i in range(5)]).seq == 1
    return address, primary


class Subscriber(threading.Thread):
    """A Watch stream on `address`, every event kept with its arrival time."""

    def __init__(self, address: str) -> None:
        super().__init__(name="test-subscriber", daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.call = recall_pb2_grpc.RecallStub(self.channel).Watch(pb.WatchRequest(), timeout=60)
        self.events: list[tuple[float, pb.WatchEvent]] = []
        self.start()

    def run(self) -> None:
        try:
            for event in self.call:
                self.events.append((time.time(), event))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.join(STARTUP_TIMEOUT)
        self.channel.close()


def test_a_paused_follower_does_not_vouch_for_what_it_missed(tmp_path):
    address, primary = start_primary(tmp_path)
    follower = ServerProcess(tmp_path / "follower", "--follow", address, "--heartbeat-interval", HEARTBEAT,
                             "--max-staleness", str(MAX_STALENESS))
    subscriber = None
    try:
        with RecallClient(follower.address, timeout=5) as f:
            until(lambda: not isinstance(quietly(lambda: f.check(1, min_seq=1)), RecallError), what="synced")
            subscriber = Subscriber(follower.address)
            until(lambda: any(e.HasField("heartbeat") for _, e in subscriber.events), what="a heartbeat")

            paused_at, resumed_at, primary = stall_and_revoke(follower.proc, primary, tmp_path / "primary", address)

            samples = []
            while not samples or samples[-1][2] != [TokenState.REVOKED]:
                batch = quietly(lambda: f.check_batch([1]).states)
                stats = f.stats()  # after the answer: at least as far along
                samples.append((stats.seq, stats.staleness, batch.code.name if isinstance(batch, RecallError) else list(batch)))
                assert time.time() < resumed_at + WAIT, f"the follower never caught up: {samples[-5:]}"
            for seq, staleness, answer in samples:
                assert answer in ("UNAVAILABLE", [TokenState.REVOKED]), (seq, staleness, answer)
                if seq == 1:  # what it holds is as old as the pause, and it says so
                    assert staleness >= STALL - 0.5, (seq, staleness, answer)
            assert samples[-1][0] == 2
            # Nothing sent to its own subscriber after the resume vouches for seq 1 beyond the pause.
            until(lambda: any(e.head_seq == 2 for _, e in subscriber.events), what="the subscriber's seq 2")
            late = [e for at, e in subscriber.events if at >= resumed_at and e.head_seq == 1]
            assert all(e.vouched_at_us / 1e6 <= paused_at + 0.05 for e in late), [  # 0: no vouch at all
                (e.WhichOneof("event"), e.vouched_at_us / 1e6 - paused_at) for e in late]
        follower.kill()
        assert "this process stalled for" in follower.proc.stderr.read()  # and it said so
    finally:
        if subscriber is not None:
            subscriber.close()
        follower.close()
        primary.close()


REPLICA_SCRIPT = """
import sys, time
from recallclient import Replica
with Replica(sys.argv[1], max_staleness=float(sys.argv[2])) as replica:
    assert replica.wait_for(1, 30)
    print("ready", flush=True)
    while True:
        print(time.time(), replica.seq, replica.staleness, int(replica.is_revoked(1)), flush=True)
        time.sleep(0.01)
"""


def test_a_paused_replica_does_not_vouch_for_what_it_missed(tmp_path):
    address, primary = start_primary(tmp_path)
    replica = subprocess.Popen([sys.executable, "-c", REPLICA_SCRIPT, address, str(MAX_STALENESS)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert replica.stdout.readline() == "ready\n", replica.stderr.read()
        time.sleep(0.5)  # heartbeats flow; the replica is fresh
        paused_at, resumed_at, primary = stall_and_revoke(replica, primary, tmp_path / "primary", address)
        after = []
        for line in replica.stdout:
            at, seq, staleness, revoked = line.split()
            if float(at) >= resumed_at - 0.01:  # printed after the resume (earlier lines waited in the pipe)
                after.append((float(at) - resumed_at, int(seq), float(staleness), revoked == "1"))
                if int(seq) == 2:
                    break
            assert time.time() < resumed_at + WAIT, "the replica never caught up"
        assert after and after[-1][1] == 2
        for since_resume, seq, staleness, revoked in after:
            if seq == 1:
                assert staleness >= STALL - 0.5, (since_resume, seq, staleness)
                # Once its ticker has run (it wakes with the process), it fails closed.
                if since_resume > 0.3:
                    assert revoked, (since_resume, seq, staleness)
            else:
                assert revoked  # seq 2: serial 1 is revoked
    finally:
        replica.kill()
        replica.communicate(timeout=STARTUP_TIMEOUT)
        primary.close()
