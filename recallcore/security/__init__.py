"""Security: TLS material, caller identities, bearer credentials and the caller policy.

`tls` serves the gRPC listener's certificate (reloaded when its files
change), `identity` says who a caller is from its certificate or bearer
credential, `credentials` and `policy` are the two files an operator
writes (hashes of secrets; roles granted to identities), `reloading` keeps
them current, and `gate` is what every adapter in `recallcore.api` calls
before anything else: authenticate, authorize by the call's role, cap a
caller's streams. `jwt_verifier` and `set_verifier` verify access tokens
and Security Event Tokens against their issuers' keys (`jwks`). Modules here may import the core, the settings'
constants and grpc (tls); never a
storage engine; identity, credentials, policy and gate do no I/O of their
own beyond reading their files.
"""
