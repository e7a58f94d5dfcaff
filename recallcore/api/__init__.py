"""The adapters callers speak to: today the recall.v1 gRPC service.

Each adapter decodes a request, calls the node (primary or follower), encodes
the answer and maps the core's errors to the protocol's status codes, in one
place per protocol. The HTTP edge, Envoy ext_authz and signal receivers land
here too, as thin adapters over one decision function. Modules here may
import the core, replication and their protocol's libraries; never a storage
engine.
"""
