"""Security: TLS material, caller identities and the caller policy.

Empty today. What lands here: server and client credentials (and their
reload), how a caller's identity is read from its certificate or bearer
credential, and the policy that maps identities to roles, which every adapter
in `recallcore.api` applies before it calls the core. Modules here may import
the core and grpc; never a storage engine.
"""
