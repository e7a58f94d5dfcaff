"""Replication: the read side every node shares, and how changes travel between nodes.

`node` answers reads from the in-memory mirror and wakes callers waiting for
a sequence, `hub` fans committed deltas out to Watch streams, `watch` is one
Watch stream (snapshot, catch-up, live deltas, heartbeats), `follower` a
read-only node that follows a primary over Watch. Modules here may import the
core, asyncio and the protocol's generated messages; grpc only to reach a
primary (the follower). They never touch storage engines directly: a primary
hands them history through the node's hooks.
"""
