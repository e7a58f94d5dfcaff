"""A subscriber process for the propagation scenarios (run by bench.propagation).

`python -m bench.subscriber KIND TARGET COUNT DRIVER [WAVE]` runs COUNT subscribers
of one kind against TARGET and records, for each, when every change reached
it, as time.monotonic_ns() (CLOCK_MONOTONIC is one clock for every process
on the host, so the parent compares it with the instant its call started):

  replica  recallclient Replica (DRIVER thread) or AsyncReplica (DRIVER
           async) on TARGET "host:port"; a listener stamps each applied
           delta or installed snapshot with the seq it brings the replica to.
  redis    redis-py pub/sub subscribers on TARGET "host:port", channel
           "recall", one connection each (DRIVER thread: a thread each;
           async: redis.asyncio on one loop); each message is a seq.

Replicas start in waves of WAVE (default 10), each wave once the previous
one installed its snapshot: what is measured is steady-state propagation,
not a thundering herd of snapshots (the time to sync them all is reported).

Commands arrive as JSON lines on stdin, answers leave as JSON lines:
  {"cmd": "ready", "seq": S}      -> {"ready": COUNT} once all are at S
  {"cmd": "collect", "seq": S, "timeout": T}
                                  -> {"records": [[[seq, t_ns], ...] per subscriber]}
                                     once all reached S (or T passed); records restart
  {"cmd": "quit"}                 -> closes everything and exits
"""

import asyncio
import json
import sys
import threading
import time

POLL = 0.005


class _Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[int, int]] = []
        self.seq = 0
        self.ready = False

    def stamp(self, seq: int) -> None:
        t = time.monotonic_ns()
        self.records.append((seq, t))
        self.seq = max(self.seq, seq)


def _waves(recorders: list, start_one, wave: int, timeout: float = 120) -> None:
    """Start subscribers `wave` at a time, each wave once the last one has its first record."""
    for i in range(0, len(recorders), wave):
        for rec in recorders[i : i + wave]:
            start_one(rec)
        _wait(recorders[i : i + wave], lambda r: bool(r.records), timeout)


def _replicas(target: str, count: int, driver: str, wave: int):
    from recallclient import AsyncReplica, Replica

    recorders = [_Recorder() for _ in range(count)]

    def listener(rec: _Recorder):
        def on_outcome(outcome) -> None:
            if outcome.kind in ("applied", "installed"):
                rec.stamp(outcome.seq)
        return on_outcome

    if driver == "thread":
        replicas = []

        def start_thread(rec: _Recorder) -> None:
            replicas.append(Replica(target, max_staleness=30.0, on_change=listener(rec)).start())

        _waves(recorders, start_thread, wave)
        return recorders, lambda: [r.close() for r in replicas]

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    replicas = []

    async def start(rec: _Recorder):
        return await AsyncReplica(target, max_staleness=30.0, on_change=listener(rec)).start()

    _waves(recorders, lambda rec: replicas.append(asyncio.run_coroutine_threadsafe(start(rec), loop).result(60)),
           wave)

    def close():
        async def stop_all():
            await asyncio.gather(*(r.close() for r in replicas))
        asyncio.run_coroutine_threadsafe(stop_all(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)

    return recorders, close


def _redis(target: str, count: int, driver: str):
    host, _, port = target.rpartition(":")
    recorders = [_Recorder() for _ in range(count)]
    if driver == "thread":
        import redis

        pubsubs = []

        def listen(pubsub, rec: _Recorder) -> None:
            try:
                for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        rec.ready = True
                    elif message["type"] == "message":
                        rec.stamp(int(message["data"]))
            except (redis.ConnectionError, ValueError, OSError):
                return

        for rec in recorders:
            pubsub = redis.Redis(host=host, port=int(port)).pubsub()
            pubsub.subscribe("recall")
            pubsubs.append(pubsub)
            threading.Thread(target=listen, args=(pubsub, rec), daemon=True).start()
        return recorders, lambda: [p.close() for p in pubsubs]

    import redis.asyncio as aredis

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def listen(rec: _Recorder) -> None:
        pubsub = aredis.Redis(host=host, port=int(port)).pubsub()
        await pubsub.subscribe("recall")
        async for message in pubsub.listen():
            if message["type"] == "subscribe":
                rec.ready = True
            elif message["type"] == "message":
                rec.stamp(int(message["data"]))

    tasks = [asyncio.run_coroutine_threadsafe(listen(rec), loop) for rec in recorders]
    return recorders, lambda: [t.cancel() for t in tasks]


def _wait(recorders: list[_Recorder], done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not all(done(r) for r in recorders):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def main(argv: list[str]) -> int:
    kind, target, count, driver = argv[0], argv[1], int(argv[2]), argv[3]
    wave = int(argv[4]) if len(argv) > 4 else 10
    if kind == "replica":
        recorders, close = _replicas(target, count, driver, wave)
    else:
        recorders, close = _redis(target, count, driver)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            if command["cmd"] == "ready":
                seq = command.get("seq", 0)
                done = (lambda r: r.ready) if kind == "redis" else (lambda r, seq=seq: r.seq >= seq and bool(r.records))
                if not _wait(recorders, done, command.get("timeout", 60)):
                    reply = {"error": f"subscribers not ready: {sum(map(done, recorders))} of {count}"}
                else:
                    reply = {"ready": count}
            elif command["cmd"] == "collect":
                seq = command["seq"]
                _wait(recorders, lambda r, seq=seq: r.seq >= seq, command.get("timeout", 30))
                reply = {"records": [r.records for r in recorders]}
                for r in recorders:
                    r.records = []
            else:
                reply = {"error": f"unknown command {command['cmd']!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
