"""The pure core: domain values, input rules, the in-memory state, and what each write does.

`model` holds the frozen values of requests and operations, `validate` every
rule a request must pass, `mirror` the revoked set with every serial's expiry
(what Check answers from), `operations` and `lifecycle` what each write
operation does against the storage interface (`recallcore.storage.base`),
`audit` the queries over the audit trail, `signals` what a Security Event
Token asks and applying it once, `errors` the expected failures and the
status each maps to. Modules here may import the client library's
protocol values (`recallclient.types`, `.jti`, `.revoked_set`, `.codec`),
pyroaring, numpy and the settings; never grpc, lmdb, psycopg, asyncio or
logging configuration, and they do no I/O: callers pass the clock's `now`
and a transaction.
"""
