"""The HTTP edge: what gateways and OAuth clients speak (aiohttp, on the gRPC server's loop).

  GET  /v1/check             forward-auth for nginx auth_request, Traefik, Caddy (gateway.py)
  POST /oauth2/introspect    RFC 7662 introspection (oauth.py)
  POST /oauth2/revoke        RFC 7009 revocation (oauth.py)
  GET  /.well-known/oauth-authorization-server   RFC 8414 metadata listing them
  GET  /healthz, /readyz     liveness; readiness (a follower: within max staleness)

app.py holds the listener, caller identification and the one mapping of
errors to HTTP statuses; the handlers are thin over api/decision.py and the
node. Modules here may import what api/ may, and aiohttp.
"""
