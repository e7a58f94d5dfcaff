"""One Watch stream: snapshot or resume, then ordered deltas and heartbeats.

Theory of operation. `stream` decides how the subscriber starts: a snapshot
when it has nothing; a Reset with its reason and then a snapshot when it
followed another store, followed another history of this store (a copy of
the data directory that went its own way: the history hashes at its seq
differ), is ahead of this node, or asks for changes this node no longer
holds; otherwise the deltas after its sequence. From then on it
owns one cursor (the last sequence sent) and loops: anything between the
cursor and the node's head goes out as one event (shared bytes from the hub
when the hub holds it, else a page read from the stored history); when
there is nothing to send for `heartbeat_interval` it sends a heartbeat
vouching for the cursor with the set's digest. Live deltas (from the hub)
go out as they are applied while a stream sends fewer than one per
`watch_spacing` on average (a token bucket of LIVE_BURST events, refilled
one per spacing); past that rate, the changes that arrive while a stream
waits for its next turn go out merged into one event, so a storm of writes
costs each subscriber a bounded number of events instead of one per
commit. Every event is encoded
bytes, so the gRPC method is registered with no response serializer; each
goes out stamped with the moment the node can vouch for (`vouched_at_us`,
appended as one more field, so shared payloads stay shared).
"""

import asyncio
import time
from collections.abc import AsyncIterator

from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import bitmap_bytes, rule_to_proto
from recallclient.revoked_set import split

from ..core.errors import DeadlineExceeded, Unavailable
from .hub import delta_event, merge_all
from .node import Node

SNAPSHOT_BITS = 18
SNAPSHOT_SPAN = 1 << SNAPSHOT_BITS  # serials per snapshot chunk (1 MiB of expiries)
FOREIGN_PER_CHUNK = 1 << 16
HISTORY_PAGE = 1024  # stored deltas merged into one catch-up event
LIVE_BURST = 10  # live delta events a stream sends back to back before watch_spacing applies


def _span(start: int) -> BitMap64:
    span = BitMap64()
    span.add_range(start, start + SNAPSHOT_SPAN)
    return span


def reset_event(store_id: str, reason: str, oldest: int, head: int) -> bytes:
    return pb.WatchEvent(
        store_id=store_id, head_seq=head,
        reset=pb.Reset(reason=reason, oldest_seq=oldest, current_seq=head),
    ).SerializeToString()


def snapshot_events(node: Node, with_expiries: bool) -> tuple[int, list[bytes]]:
    """(seq, encoded chunks) of the node's whole state, taken at one instant.

    Built once per seq: streams that start before the next change share it.
    """
    cached = node.hub.snapshots.get(with_expiries)
    if cached is not None and cached[0] == node.state.seq:
        return cached
    built = _build_snapshot(node, with_expiries)
    node.hub.snapshots[with_expiries] = built
    return built


def _build_snapshot(node: Node, with_expiries: bool) -> tuple[int, list[bytes]]:
    # One synchronous pass on the loop: nothing can change the mirror while it
    # runs, so it reads the live structures instead of copying them.
    mirror = node.state
    revocations = mirror.revocations
    seq, through = revocations.seq, revocations.registered_through
    revoked = revocations.revoked
    foreign = sorted(revocations.foreign)
    rotated = mirror.rotated
    rules = [rule_to_proto(r) for r in sorted(revocations.rules)]
    expiries = mirror.expiry.array[: through + 1] if with_expiries else None
    if with_expiries:
        parts = [(start, revoked & _span(start)) for start in range(0, through + 1, SNAPSHOT_SPAN)]
    else:
        parts = [(n * SNAPSHOT_SPAN, part) for n, part in split(revoked, SNAPSHOT_BITS)]
    parts = parts or [(0, BitMap64())]
    foreign_parts = [foreign[i : i + FOREIGN_PER_CHUNK] for i in range(0, len(foreign), FOREIGN_PER_CHUNK)]
    count = len(parts) + len(foreign_parts)
    common = dict(
        seq=seq, count=count, cardinality=len(revoked), foreign_cardinality=len(foreign),
        digest=revocations.digest(), registered_through=through, history=revocations.history,
    )
    events = []
    for index, (start, part) in enumerate(parts):
        chunk = pb.SnapshotChunk(index=index, revoked=bitmap_bytes(part), **common)
        if index == 0:
            chunk.rules.extend(rules)
        if expiries is not None:
            chunk.rotated = bitmap_bytes(rotated & _span(start))
            chunk.expiries_from = start
            chunk.expiries = expiries[start : start + SNAPSHOT_SPAN].astype("<u4").tobytes()
        events.append(chunk)
    for offset, part in enumerate(foreign_parts):
        events.append(pb.SnapshotChunk(index=len(parts) + offset, foreign=part, **common))
    store_id = node.store_id
    return seq, [
        pb.WatchEvent(store_id=store_id, snapshot=c, head_seq=seq).SerializeToString() for c in events
    ]


def stamped(node: Node, payload: bytes) -> bytes:
    """`payload` with the node's vouch time appended (a protobuf field merges on decode)."""
    at = node.vouch_time_us()
    return payload + pb.WatchEvent(vouched_at_us=at).SerializeToString() if at else payload


def heartbeat_event(node: Node, seq: int) -> bytes:
    revocations = node.state.revocations
    return pb.WatchEvent(
        store_id=node.store_id, head_seq=node.state.seq,
        heartbeat=pb.Heartbeat(
            seq=seq, cardinality=len(revocations.revoked),
            foreign_cardinality=len(revocations.foreign), digest=revocations.digest(),
            time=int(time.time()), interval_ms=int(node.settings.heartbeat_interval * 1000),
        ),
    ).SerializeToString()


async def _start(node: Node, request: pb.WatchRequest) -> tuple[str, int]:
    """(reason to reset or "", the cursor to resume from or -1 for a snapshot).

    Raises FailedPrecondition on a node that has not synced, Unavailable on
    one that cannot vouch for its state (a follower cut off from its primary,
    a cluster node cut off from its database) or stays behind the subscriber.
    """
    node.require_ready()
    node.require_vouching()
    if request.store_id and request.store_id != node.store_id:
        return f"store changed: subscriber followed {request.store_id}, this is {node.store_id}", -1
    if request.after_seq > node.state.seq and node.ahead_wait:
        try:  # a follower behind the subscriber: let its primary's changes arrive
            await node.wait_for_seq(request.after_seq, node.ahead_wait)
        except DeadlineExceeded:
            raise Unavailable(
                f"this follower is at seq {node.state.seq}, behind the subscriber's {request.after_seq}; "
                "try another node"
            ) from None
    head = node.state.seq
    if request.after_seq > head:
        return f"ahead: subscriber at seq {request.after_seq}, this node at {head}", -1
    if request.after_seq == 0:
        return "", -1
    if request.after_seq < head and await node.history(request.after_seq, 1) is None:
        return f"compacted: changes after seq {request.after_seq} are no longer held", -1
    if request.history:
        ours = await node.history_at(request.after_seq)
        if ours and ours != request.history:
            return (f"diverged: the subscriber's history at seq {request.after_seq} is not this node's "
                    "(a copy of the store that went its own way)"), -1
    return "", request.after_seq


async def stream(node: Node, request: pb.WatchRequest) -> AsyncIterator[bytes]:
    """The encoded events of one Watch stream, until the caller stops iterating."""
    node.hub.streams += 1
    me = object()
    try:
        reason, cursor = await _start(node, request)
        interval, spacing = node.settings.heartbeat_interval, node.settings.watch_spacing
        while not node.hub.closed:
            epoch = node.hub.epoch
            if reason:
                yield reset_event(node.store_id, reason, await node.oldest_resumable(), node.state.seq)
            if cursor < 0:
                cursor, chunks = snapshot_events(node, request.with_expiries)
                for chunk in chunks[:-1]:
                    yield chunk
                if node.state.seq == cursor:
                    yield stamped(node, chunks[-1])  # the last chunk installs: it vouches
                else:  # changes committed while the chunks went out: it installs seq `cursor`,
                    # which is not the newest now (a later field wins on decode), and vouches for nothing
                    yield chunks[-1] + pb.WatchEvent(head_seq=node.state.seq).SerializeToString()
                node.hub.cursors[me] = cursor
            reason = ""
            last_sent = time.monotonic()
            allowance, counted = float(LIVE_BURST), last_sent  # live events that may go out now
            while epoch == node.hub.epoch and not node.hub.closed:
                head = node.state.seq
                if cursor < head:
                    if spacing and node.hub.covers(cursor):
                        now = time.monotonic()
                        allowance, counted = min(LIVE_BURST, allowance + (now - counted) / spacing), now
                        if allowance < 1:  # more may follow: let them, and send them as one
                            await asyncio.sleep((1 - allowance) * spacing)
                            continue
                        allowance -= 1
                    shared = node.hub.event_since(node.store_id, cursor)
                    if shared is not None:
                        payload, cursor = shared
                    else:
                        page = await node.history(cursor, HISTORY_PAGE)
                        if epoch != node.hub.epoch:
                            break
                        if not page:
                            reason = f"compacted: changes after seq {cursor} are no longer held"
                            break
                        merged = merge_all(page)
                        payload, cursor = delta_event(node.store_id, merged, node.state.seq), merged.seq
                    yield stamped(node, payload)
                    node.hub.cursors[me] = cursor
                    last_sent = time.monotonic()
                    continue
                idle = time.monotonic() - last_sent
                if idle >= interval:
                    if node.vouching():  # else let the subscriber see its staleness grow
                        yield stamped(node, heartbeat_event(node, cursor))
                    last_sent = time.monotonic()
                    continue
                await node.hub.wait(interval - idle)
            else:
                if node.hub.closed:
                    return
                reason = "upstream reset: this node installed a new snapshot"
            cursor = -1
    finally:
        node.hub.streams -= 1
        node.hub.cursors.pop(me, None)
