"""The adapters callers speak to: the recall.v1 gRPC service, the HTTP edge, ext_authz, signals.

Each adapter decodes a request, calls the node (primary or follower), encodes
the answer and maps the core's errors to the protocol's status codes, in one
place per protocol. The HTTP edge and Envoy ext_authz are thin adapters
over one decision function; the Shared Signals receiver (`signals`, with
`ssf_poll` and `http/ssf.py`) over Engine.signal. Modules here may
import the core, replication and their protocol's libraries; never a storage
engine.
"""
