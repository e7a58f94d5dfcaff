"""`recallctl watch` against a real server: in-process with capsys, and as a process.

A watch that must see revocations "made meanwhile" revokes when the snapshot
line is printed (in-process: a stdout wrapper; subprocess: reading its
lines), and stops on the line it waits for (KeyboardInterrupt / SIGINT,
which also checks the Ctrl-C exit code); the others are bounded by --count.
"""

import contextlib
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest
from recallclient import RecallClient, TokenSpec, cli

from recallcore.settings import Settings

from ..support import (
    RECALLCTL,
    STARTUP_TIMEOUT,
    ServerProcess,
    ServerThread,
    StreamingCommand,
    free_address,
    interrupt_when,
    restart_under,
)

OTHER = "https://other-idp.example"


@pytest.fixture
def settings(data_dir: pathlib.Path) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                    heartbeat_interval=0.05)


@pytest.fixture(autouse=True)
def no_target_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TARGET_ENV, raising=False)


def watch(capsys, *argv: str) -> list[dict]:
    """Run `recallctl watch --json ARGV` in-process; return its JSON lines."""
    code = cli.main(["watch", "--json", *argv])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def setup_store(client: RecallClient) -> tuple[list, int]:
    """Register 4 tokens and revoke the first; return (tokens, seq)."""
    tokens = list(client.register([TokenSpec(f"u{i}", "app") for i in range(4)]).tokens)
    return tokens, client.revoke(serials=[tokens[0].serial]).seq


class Tee:
    """A stdout wrapper that hands every complete line to `on_line`."""

    def __init__(self, inner, on_line: Callable[[str], None]) -> None:
        self.inner, self.on_line, self._partial = inner, on_line, ""

    def write(self, text: str) -> int:
        written = self.inner.write(text)
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.on_line(line)
        return written

    def flush(self) -> None:
        self.inner.flush()


def check_live_stream(events: list[dict], snapshot_seq: int, revoked_seq: int) -> None:
    """Snapshot first; then heartbeats and deltas, in order, reaching revoked_seq."""
    assert events[0]["type"] == "snapshot" and events[0]["seq"] == snapshot_seq
    assert events[0]["cardinality"] == 1 and (events[0]["index"], events[0]["count"]) == (0, 1)
    seq = snapshot_seq
    for event in events[1:]:
        assert event["type"] in ("delta", "heartbeat")
        if event["type"] == "delta":
            assert event["prev_seq"] == seq
            seq = event["seq"]
        assert event["seq"] == seq
    deltas = [e for e in events if e["type"] == "delta"]
    assert sum(d["added"] for d in deltas) == 2 and sum(d["foreign_added"] for d in deltas) == 1
    assert seq == revoked_seq and events[-1] == {**events[-1], "type": "heartbeat", "cardinality": 3}


def test_watch_in_process_snapshot_then_live_deltas_then_ctrl_c(capsys, server, client):
    tokens, seq = setup_store(client)
    revoked: list[int] = []

    def on_line(line: str) -> None:
        event = json.loads(line)
        if event["type"] == "snapshot":
            client.revoke(serials=[tokens[1].serial])
            revoked.append(client.revoke(serials=[tokens[2].serial], tokens=[(OTHER, "x")]).seq)
        elif event["type"] == "heartbeat" and revoked and event["seq"] == revoked[0]:
            raise KeyboardInterrupt  # what Ctrl-C does

    sys.stdout = Tee(sys.stdout, on_line)
    try:
        events = watch(capsys, "--target", server.address, "--count", "1000")
    finally:
        sys.stdout = sys.stdout.inner
    check_live_stream(events, seq, revoked[0])


def test_watch_count_resume_after_seq(capsys, server, client):
    tokens, first = setup_store(client)
    store_id = client.stats().store_id
    last = client.revoke(serials=[tokens[1].serial, tokens[2].serial]).seq
    events = watch(capsys, "--target", server.address, "--after-seq", str(first),
                   "--store-id", store_id, "--count", "3")
    assert [e["type"] for e in events] == ["delta", "heartbeat", "heartbeat"]
    assert (events[0]["prev_seq"], events[0]["seq"], events[0]["added"]) == (first, last, 2)
    assert all(e["seq"] == last and e["store_id"] == store_id for e in events)


def test_watch_bogus_store_id_resets_then_snapshots(capsys, server, client):
    _, seq = setup_store(client)
    events = watch(capsys, "--target", server.address, "--after-seq", str(seq),
                   "--store-id", "bogus", "--count", "3")
    assert [e["type"] for e in events] == ["reset", "snapshot", "heartbeat"]
    assert "bogus" in events[0]["reason"] and events[0]["current_seq"] == seq
    assert events[1]["seq"] == seq and events[1]["cardinality"] == 1


def test_watch_human_lines(capsys, server, client):
    setup_store(client)
    code = cli.main(["watch", "--target", server.address, "--count", "2"])
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("snapshot seq ") and "1 revoked" in lines[0]
    assert lines[1].startswith("heartbeat seq ")


def test_watch_bad_arguments_and_unreachable_server(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["watch", "--count", "0"])
    assert exc.value.code == 2
    assert cli.main(["watch", "--target", "127.0.0.1:1", "--count", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_watch_subprocess_live_then_sigint(server, client):
    tokens, seq = setup_store(client)
    revoked = None

    def done(lines: list[str]) -> bool:
        nonlocal revoked
        event = json.loads(lines[-1])
        if len(lines) == 1:
            client.revoke(serials=[tokens[1].serial])
            revoked = client.revoke(serials=[tokens[2].serial], tokens=[(OTHER, "x")]).seq
            return False
        return event["type"] == "heartbeat" and event["seq"] == revoked

    code, err, lines = interrupt_when([str(RECALLCTL), "--target", server.address, "watch", "--json"], done)
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in lines]
    check_live_stream(events, seq, revoked)


def test_watch_subprocess_count(server, client):
    _, seq = setup_store(client)
    done = subprocess.run([str(RECALLCTL), "--target", server.address, "watch", "--json",
                           "--count", "3"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert (done.returncode, done.stderr) == (0, "")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events] == ["snapshot", "heartbeat", "heartbeat"]
    assert all(e["seq"] == seq for e in events)


# ------------------------------------------------- when the server goes away


def test_watch_resumes_after_a_server_restart_from_its_last_seq(tmp_path):
    address, beat = free_address(), ("--heartbeat-interval", "0.05")
    with contextlib.ExitStack() as cleanup:
        first = cleanup.enter_context(contextlib.closing(ServerProcess(tmp_path / "data", *beat, listen=address)))
        with RecallClient(address) as client:
            tokens, seq = setup_store(client)
        watch = cleanup.enter_context(contextlib.closing(
            StreamingCommand(str(RECALLCTL), "--target", address, "watch", "--json")))
        watch.wait_for(watch.stdout, lambda line: json.loads(line)["type"] == "heartbeat", "a heartbeat")
        cleanup.enter_context(contextlib.closing(restart_under(watch, first)))
        with RecallClient(address) as client:
            later = client.revoke(serials=[tokens[1].serial]).seq
        watch.wait_for(watch.stdout, lambda line: json.loads(line)["seq"] == later, "the change after the restart")
        assert watch.interrupt() == 0
    events = [json.loads(line) for line in watch.stdout]
    assert [e["type"] for e in events].count("snapshot") == 1 and events[0]["seq"] == seq
    [delta] = [e for e in events if e["type"] == "delta"]
    assert (delta["prev_seq"], delta["seq"], delta["added"]) == (seq, later, 1)  # no gap, nothing twice
    assert watch.stderr[0].startswith("recallctl: watch: ")
    assert watch.stderr[0].endswith(f"; reconnecting to {address} to resume after seq {seq}\n")
    assert watch.stderr[-1] == f"recallctl: watch: reconnected to {address}; resuming after seq {seq}\n"


@pytest.mark.parametrize("wait, says", [
    ("0", "not reconnecting (--reconnect-for 0)"),
    ("0.5", "gave up: no answer from {address} for 0.5 s"),
])
def test_watch_exits_1_saying_why_when_the_server_stays_away(settings, wait, says):
    server = ServerThread(settings)  # stopped by the test, not by a fixture
    watch = StreamingCommand(str(RECALLCTL), "--target", server.address, "watch", "--reconnect-for", wait)
    try:
        watch.wait_for(watch.stdout, lambda line: line.startswith("heartbeat"), "a heartbeat")
    finally:
        server.stop()
    try:
        assert watch.wait() == 1
    finally:
        watch.close()
    assert says.format(address=server.address) in watch.stderr[-1] and watch.stderr[-1].startswith("recallctl: watch: ")
    assert all(line.startswith("recallctl: watch: ") for line in watch.stderr)
