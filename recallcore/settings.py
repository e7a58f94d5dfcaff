"""Server settings: one frozen, validated value. Only cli.py reads the environment."""

import dataclasses
import difflib
import functools
import pathlib
import re

DEFAULT_DATA_DIR = pathlib.Path("var/recall")
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ISSUER = "recallcore"
DEFAULT_TOKEN_TTL = 3600  # seconds, when a registration gives no expires_at
DEFAULT_MAX_TOKEN_LIFETIME = 30 * 86400  # longest registered lifetime; expiry of foreign revocations
DEFAULT_AUDIT_RETENTION = 30 * 86400  # token records and audit kept this long past expiry
DEFAULT_SWEEP_INTERVAL = 10.0  # seconds between expiry sweeps
DEFAULT_MAX_BATCH = 100_000  # tokens, serials or references in one call
DEFAULT_MAX_STRING = 1024  # bytes of UTF-8 in any string field
DEFAULT_MAX_SCOPES = 256
DEFAULT_MAP_SIZE = 64 << 20  # initial LMDB map size
DEFAULT_MAX_MAP_SIZE = 64 << 30  # the map grows up to this, then writes fail
DEFAULT_GROUP_COMMIT = 512  # operations committed in one transaction at most
DEFAULT_PURGE_BATCH = 10_000  # token records purged per sweep at most
DEFAULT_CLOCK_SKEW = 60  # seconds other clocks may lag or lead this one
DEFAULT_ROTATION_GRACE = 10  # seconds a retry of the same rotation gets the same successor
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds of silence before a Watch heartbeat
DEFAULT_WATCH_SPACING = 0.02  # seconds per live delta event of one Watch stream, on average, past a burst
DEFAULT_WATCH_RING = 4096  # recent deltas kept in memory for Watch streams
DEFAULT_LOG_KEEP = 1_000_000  # changes kept in the log for resuming Watch streams...
DEFAULT_LOG_KEEP_SECONDS = 7 * 86400  # ...and for at least this long
DEFAULT_MAX_STALENESS = 5.0  # seconds a follower answers after its primary last vouched for it
DEFAULT_FRESHNESS_SKEW = 0.5  # seconds another node's clock may differ when judging a vouch
DEFAULT_STORE_TIMEOUT = 10.0  # seconds to wait for one answer of PostgreSQL before cutting the connection
DEFAULT_MAX_WAIT = 30.0  # seconds a read waits for its min_seq at most, whatever its deadline
DEFAULT_MAX_STREAMS_PER_IDENTITY = 64  # concurrent Watch + AuditLog streams of one caller
DEFAULT_JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                          "EdDSA", "Ed25519")
DEFAULT_STATUS_LIST_SIZE = 1 << 20  # statuses in one list: large lists hide which token a verifier asks about
DEFAULT_STATUS_LIST_TTL = 60  # seconds a verifier may keep a list before fetching it anew
DEFAULT_STATUS_LIST_INTERVAL = 1.0  # seconds between rebuilds of one list at most, however many changes
DEFAULT_PRESENTED_INTERVAL = 10.0  # seconds between records of recalled tokens presented again
DEFAULT_CHECK_HEADERS = ("sub=X-Recall-Subject", "client_id=X-Recall-Client")
CHECK_HEADER_FIELDS = ("sub", "client_id", "scope", "iss", "jti", "exp", "serial")
DEFAULT_SSF_MAX_AGE = 86400  # seconds: a SET issued longer ago is refused (its jti may be forgotten then)
DEFAULT_SSF_POLL_INTERVAL = 5.0  # seconds between polls of a transmitter that had nothing
DEFAULT_SSF_POLL_BACKOFF = 60.0  # seconds: the longest wait after failed polls
_STREAM = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclasses.dataclass(frozen=True)
class Transmitter:
    """One `[[ssf.transmitters]]` table: an identity provider whose Security Event Tokens
    recallcore receives (see api/signals.py).

    stream: its name; SETs are pushed to /ssf/push/<stream>.
    issuer: the SETs' `iss`.
    audience: what their `aud` must name (this receiver).
    jwks: its public keys, a JWKS file or an https:// URL; or
    metadata: the https:// URL of its /.well-known/ssf-configuration, whose
        jwks_uri holds them.
    identity: when set, a push must also authenticate (Authorization:
        Bearer of the credentials file, or a client certificate) as this
        identity, as the policy names it (token:NAME, dns:..., spiffe://...).
    poll: the https:// URL of its RFC 8936 poll endpoint: recallcore polls it.
    poll_token_file: a file holding the bearer secret sent to `poll`.
    cacert: PEM CA bundle for `poll`, `metadata` and a `jwks` URL
        (default: jwks_cacert, else the system's).
    """

    stream: str
    issuer: str
    audience: str
    jwks: str = ""
    metadata: str = ""
    identity: str = ""
    poll: str = ""
    poll_token_file: str = ""
    cacert: str = ""


TRANSMITTER_KEYS = tuple(f.name for f in dataclasses.fields(Transmitter))


@dataclasses.dataclass(frozen=True)
class Downstream:
    """One `[[ssf.receivers]]` table: a relying party recallcore sends CAEP SETs to when it
    revokes by subject or cuts a subject off (see api/ssf_transmit.py).

    stream: its name (the poll path is /ssf/poll/<stream>).
    audience: the SETs' `aud`.
    push: the https:// URL of its RFC 8935 push endpoint; without it, the
        receiver polls /ssf/poll/<stream> (RFC 8936).
    push_token_file: a file holding the bearer secret sent with each push.
    identity: who may poll the stream (as the policy names it); without
        it, with a policy, a caller with the `audit` role.
    cacert: PEM CA bundle for `push` (default: the system's).
    """

    stream: str
    audience: str
    push: str = ""
    push_token_file: str = ""
    identity: str = ""
    cacert: str = ""


DOWNSTREAM_KEYS = tuple(f.name for f in dataclasses.fields(Downstream))
LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _host_port(value: str, name: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{name}: {value!r} is not HOST:PORT")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a server runs. Every field is validated on construction.

    data_dir: the LMDB environment and its lock live here (unused with `store`).
    store: a PostgreSQL conninfo (postgresql://... or key=value, multi-host
        with target_session_attrs=read-write included): the cluster engine,
        one database every node shares. Empty: LMDB in data_dir.
    store_timeout: seconds the node waits for one answer of PostgreSQL
        before it cuts that connection: the write fails UNAVAILABLE (it may
        have committed; revoking again is harmless) and the next one
        connects anew, so a link gone silent holds nothing longer than this.
    listen: HOST:PORT to serve on; port 0 picks a free port.
    issuer: issuer recorded for registrations that give none.
    token_ttl: lifetime of a registration that gives no expires_at.
    max_token_lifetime: longest accepted lifetime; how long a revoked foreign
        token (never registered) stays revoked when no expiry is given, and
        the latest expiry a foreign revocation may give.
    audit_retention: token records are kept this long after expiry; audit
        records this long after the longest-lived token they can describe
        (max_token_lifetime + audit_retention after they were written).
    sweep_interval: seconds between sweeps of expired tokens.
    max_batch: most tokens / serials / references per call.
    max_string: most bytes in any string field.
    map_size / max_map_size: LMDB map size at start and the most it grows to.
    group_commit: most operations committed in one transaction.
    heartbeat_interval: seconds a Watch stream may be silent before a heartbeat.
    watch_spacing: a Watch stream sends live delta events as changes are
        applied while it sends fewer than one per watch_spacing seconds on
        average (after a burst of 10); past that rate, the changes of each
        wait go out merged into one event (0: every commit as soon as it is
        applied). This bounds the events each subscriber receives in a
        storm of writes.
    watch_ring: recent deltas kept in memory (a follower's whole history).
    log_keep / log_keep_seconds: the change log keeps at least the newest
        log_keep changes, and every change younger than log_keep_seconds;
        older ones are compacted and a subscriber behind them gets a snapshot.
    clock_skew: seconds other clocks may differ from this one: revocations
        are forgotten only this long after expiry, and issue times later
        than now + clock_skew are refused.
    rotation_grace: seconds during which a retry of the same rotation
        returns the same successor instead of counting as reuse.
    follow: HOST:PORT of a primary to follow (a read-only node); empty for a primary.
    max_staleness: a follower whose primary has not vouched for it for this
        many seconds answers Check, CheckBatch and Introspect UNAVAILABLE and
        reports NOT_SERVING, until a fresh vouch arrives; so does a cluster
        node that has not read the database's change log for as long.
    max_wait: the longest a Check or CheckBatch waits for its min_seq on a
        follower, deadline or not (a primary refuses a min_seq above its head
        at once).
    tls_cert, tls_key: PEM files of the server's certificate chain and key
        (TLS on the gRPC listener; reloaded when they change).
    client_ca: PEM file of the CA that signs client certificates: with it,
        every caller must present one (mutual TLS).
    policy: TOML file granting roles to identities (security/policy.py);
        with it, everything not granted is denied.
    credentials: TOML file of bearer-credential names and secret hashes.
    insecure: serve a non-loopback address without TLS (and policy) anyway.
    max_streams_per_identity: concurrent Watch and AuditLog streams of one
        caller identity (0: no cap).
    primary_cacert, primary_cert, primary_key, primary_token_file: a
        follower's TLS material and bearer credential (a file holding the
        secret) for its primary.
    freshness_skew: seconds the primary's clock may differ from this node's
        when judging how fresh its vouch is (followers; see
        recallclient.freshness). Not the tokens' clock_skew: this one should
        be small, hosts on NTP agree within milliseconds.
    http_listen: HOST:PORT of the HTTP edge (forward-auth, RFC 7662, RFC
        7009); empty: no HTTP listener. TLS, the policy and the secure
        default apply as for `listen`.
    jwt_issuers: "ISSUER=JWKS" entries: JWTs of ISSUER are verified with
        the keys of JWKS, a file path or an https:// URL (split at the first
        "="). JWTs of any other issuer are refused at the edge.
    jwt_audience: when set, a JWT must name it in `aud`.
    jwt_algorithms: signature algorithms accepted (asymmetric only).
    jwks_cacert: PEM CA bundle for fetching JWKS URLs (default: the system's).
    oauth_clients: TOML file of OAuth client ids and secret hashes
        ([clients]), for HTTP Basic at the introspection and revocation
        endpoints.
    check_headers: "FIELD=Header" pairs: what /v1/check hands an allowed
        request's upstream (FIELD one of CHECK_HEADER_FIELDS).
    status_list_uri: base URI of the Token Status Lists (e.g.
        https://recall.example/statuslists); list n is <uri>/n. With it,
        Register returns each token's (idx, uri) and the HTTP edge serves
        the lists. It goes into issued tokens: keep it stable.
    status_list_key: JWK file of the private key the lists are signed with.
    status_list_size: statuses in one list.
    status_list_ttl: the lists' `ttl` (seconds); they expire 5 ttl after
        they were signed.
    status_list_interval: a list is rebuilt at most this often (seconds).
    metrics_listen: HOST:PORT of the Prometheus metrics listener (GET
        /metrics); empty: none. TLS (the server's files) applies as for the
        other listeners; with a policy, scrapes need a bearer credential
        whose identity holds the check role. Keep it on loopback or behind
        both.
    presented_interval: seconds between counts and audit records of
        recalled tokens presented again.
    presented_webhook: URL each recalled token presented again is POSTed
        to as JSON (retried with backoff, in order; a bounded queue).
    presented_webhook_token_file: file holding a bearer secret for it.
    ssf_transmitters: the `[[ssf.transmitters]]` tables of the config file,
        each as Transmitter describes (`transmitters` has them checked).
    ssf_max_age: seconds after its iat a SET is refused.
    ssf_poll_interval: seconds between polls of a transmitter that had
        nothing to deliver.
    ssf_poll_backoff: the longest wait (seconds) after failed polls (and
        pushes); the wait doubles from ssf_poll_interval / 5 up to it.
    ssf_receivers: the `[[ssf.receivers]]` tables, as Downstream describes.
    ssf_key: JWK file of the private key the SETs sent are signed with.
    ssf_issuer: their `iss` (default: issuer).
    """

    data_dir: pathlib.Path = DEFAULT_DATA_DIR
    store: str = ""
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    listen: str = DEFAULT_LISTEN
    issuer: str = DEFAULT_ISSUER
    token_ttl: int = DEFAULT_TOKEN_TTL
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    audit_retention: int = DEFAULT_AUDIT_RETENTION
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    max_batch: int = DEFAULT_MAX_BATCH
    max_string: int = DEFAULT_MAX_STRING
    max_scopes: int = DEFAULT_MAX_SCOPES
    map_size: int = DEFAULT_MAP_SIZE
    max_map_size: int = DEFAULT_MAX_MAP_SIZE
    group_commit: int = DEFAULT_GROUP_COMMIT
    purge_batch: int = DEFAULT_PURGE_BATCH
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    watch_spacing: float = DEFAULT_WATCH_SPACING
    watch_ring: int = DEFAULT_WATCH_RING
    log_keep: int = DEFAULT_LOG_KEEP
    log_keep_seconds: int = DEFAULT_LOG_KEEP_SECONDS
    rotation_grace: int = DEFAULT_ROTATION_GRACE
    clock_skew: int = DEFAULT_CLOCK_SKEW
    follow: str = ""
    max_staleness: float = DEFAULT_MAX_STALENESS
    freshness_skew: float = DEFAULT_FRESHNESS_SKEW
    max_wait: float = DEFAULT_MAX_WAIT
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    policy: str = ""
    credentials: str = ""
    insecure: bool = False
    max_streams_per_identity: int = DEFAULT_MAX_STREAMS_PER_IDENTITY
    primary_cacert: str = ""
    primary_cert: str = ""
    primary_key: str = ""
    primary_token_file: str = ""
    http_listen: str = ""
    jwt_issuers: tuple[str, ...] = ()
    jwt_audience: str = ""
    jwt_algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    jwks_cacert: str = ""
    oauth_clients: str = ""
    check_headers: tuple[str, ...] = DEFAULT_CHECK_HEADERS
    status_list_uri: str = ""
    status_list_key: str = ""
    status_list_size: int = DEFAULT_STATUS_LIST_SIZE
    status_list_ttl: int = DEFAULT_STATUS_LIST_TTL
    status_list_interval: float = DEFAULT_STATUS_LIST_INTERVAL
    metrics_listen: str = ""
    presented_interval: float = DEFAULT_PRESENTED_INTERVAL
    presented_webhook: str = ""
    presented_webhook_token_file: str = ""
    ssf_transmitters: tuple[dict[str, str], ...] = ()
    ssf_max_age: int = DEFAULT_SSF_MAX_AGE
    ssf_poll_interval: float = DEFAULT_SSF_POLL_INTERVAL
    ssf_poll_backoff: float = DEFAULT_SSF_POLL_BACKOFF
    ssf_receivers: tuple[dict[str, str], ...] = ()
    ssf_key: str = ""
    ssf_issuer: str = ""

    @property
    def loopback(self) -> bool:
        """True when `listen` (and `http_listen`, `metrics_listen`, if set) are loopback addresses."""
        return all(_is_loopback(a) for a in (self.listen, self.http_listen, self.metrics_listen) if a)

    @functools.cached_property
    def issuer_keys(self) -> dict[str, str]:
        """jwt_issuers as issuer -> JWKS location."""
        return dict(entry.split("=", 1) for entry in self.jwt_issuers)

    @functools.cached_property
    def transmitters(self) -> tuple[Transmitter, ...]:
        """ssf_transmitters as Transmitter values (checked on construction)."""
        return tuple(Transmitter(**entry) for entry in self.ssf_transmitters)

    @functools.cached_property
    def downstreams(self) -> tuple[Downstream, ...]:
        """ssf_receivers as Downstream values (checked on construction)."""
        return tuple(Downstream(**entry) for entry in self.ssf_receivers)

    @functools.cached_property
    def identity_headers(self) -> tuple[tuple[str, str], ...]:
        """check_headers as (field, header) pairs."""
        return tuple(tuple(entry.split("=", 1)) for entry in self.check_headers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", pathlib.Path(self.data_dir))
        for name in ("jwt_issuers", "jwt_algorithms", "check_headers", "ssf_transmitters",
                     "ssf_receivers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _host_port(self.listen, "listen")
        for name in ("http_listen", "metrics_listen"):
            if getattr(self, name):
                _host_port(getattr(self, name), name)
        self._check_edge()
        self._check_ssf()
        if not self.issuer:
            raise ValueError("issuer: must not be empty")
        for name in ("token_ttl", "max_token_lifetime", "max_batch", "max_string",
                     "max_scopes", "group_commit", "purge_batch", "watch_ring", "log_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        for name in ("audit_retention", "rotation_grace", "clock_skew", "watch_spacing"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.token_ttl > self.max_token_lifetime:
            raise ValueError("token_ttl: must not exceed max_token_lifetime")
        for name in ("sweep_interval", "heartbeat_interval", "max_staleness", "max_wait", "store_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.watch_spacing >= self.heartbeat_interval:
            raise ValueError("watch_spacing: must be shorter than heartbeat_interval")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert, tls_key: give both, or neither")
        if self.client_ca and not self.tls_cert:
            raise ValueError("client_ca: mutual TLS needs --tls-cert and --tls-key")
        if self.max_streams_per_identity < 0:
            raise ValueError("max_streams_per_identity: must not be negative")
        if bool(self.primary_cert) != bool(self.primary_key):
            raise ValueError("primary_cert, primary_key: give both, or neither")
        if not self.insecure and not self.loopback:
            name, where = next((n, getattr(self, n)) for n in ("listen", "http_listen", "metrics_listen")
                               if getattr(self, n) and not _is_loopback(getattr(self, n)))
            if not self.tls_cert:
                raise ValueError(
                    f"{name}: {where} is not a loopback address and the server has no TLS: add --tls-cert "
                    "and --tls-key (and --policy), or give --insecure to serve it in the clear anyway"
                )
            if not self.policy:
                raise ValueError(
                    f"{name}: {where} is not a loopback address and the server has no caller policy: "
                    "add --policy FILE (see README: Running it for real), or give --insecure"
                )
        if self.freshness_skew < 0:
            raise ValueError("freshness_skew: must not be negative")
        if self.log_keep_seconds < 0:
            raise ValueError("log_keep_seconds: must not be negative")
        if self.follow:
            host, sep, port = self.follow.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"follow: {self.follow!r} is not HOST:PORT")
        if self.store and not self.store.startswith(("postgresql://", "postgres://")) and "=" not in self.store:
            raise ValueError(f"store: {self.store!r} is not a PostgreSQL conninfo (postgresql://HOST/DB or "
                             "'host=... dbname=...')")
        if self.store and self.follow:
            raise ValueError("store: a follower keeps no store; give --store or --follow, not both")
        if not 1 << 20 <= self.map_size <= self.max_map_size:
            raise ValueError("map_size: must be at least 1 MiB and at most max_map_size")

    def _check_edge(self) -> None:
        if self.status_list_uri:
            if "://" not in self.status_list_uri:
                raise ValueError(f"status_list_uri: {self.status_list_uri!r} is not an absolute URI")
            if not self.status_list_key:
                raise ValueError("status_list_key: status lists are signed: give the JWK file of the signing key")
        if self.status_list_size < 8 or self.status_list_size % 8:
            raise ValueError("status_list_size: must be a positive multiple of 8")
        if self.status_list_ttl < 1 or self.status_list_interval <= 0:
            raise ValueError("status_list_ttl, status_list_interval: must be positive")
        if self.presented_interval <= 0:
            raise ValueError("presented_interval: must be positive")
        if self.presented_webhook and not self.presented_webhook.startswith(("https://", "http://")):
            raise ValueError(f"presented_webhook: {self.presented_webhook!r} is not an http(s) URL")
        seen = set()
        for entry in self.jwt_issuers:
            issuer, sep, location = entry.partition("=")
            if not sep or not issuer or not location:
                raise ValueError(f"jwt_issuers: {entry!r} is not ISSUER=JWKS (a file or an https:// URL)")
            if issuer in seen:
                raise ValueError(f"jwt_issuers: issuer {issuer!r} is given twice")
            seen.add(issuer)
        unsafe = [a for a in self.jwt_algorithms if a not in DEFAULT_JWT_ALGORITHMS]
        if unsafe or not self.jwt_algorithms:
            raise ValueError(f"jwt_algorithms: {unsafe or 'none given'}; accepted are {list(DEFAULT_JWT_ALGORITHMS)}")
        for entry in self.check_headers:
            field, sep, header = entry.partition("=")
            if not sep or field not in CHECK_HEADER_FIELDS or not header or not all(
                    c.isascii() and (c.isalnum() or c == "-") for c in header):
                raise ValueError(f"check_headers: {entry!r} is not FIELD=Header-Name with FIELD one of "
                                 f"{list(CHECK_HEADER_FIELDS)}")

    def _check_ssf(self) -> None:
        self._check_downstreams()
        if self.ssf_max_age < 1 or self.ssf_poll_interval <= 0 or self.ssf_poll_backoff <= 0:
            raise ValueError("ssf_max_age, ssf_poll_interval, ssf_poll_backoff: must be positive")
        if self.ssf_transmitters and self.follow:
            raise ValueError("ssf_transmitters: a follower cannot apply signals; configure them on the primary")
        streams: set[str] = set()
        for i, entry in enumerate(self.ssf_transmitters):
            where = f"ssf_transmitters[{i}]"
            stream = _stream_table(entry, where, TRANSMITTER_KEYS, ("stream", "issuer", "audience"), streams)
            if bool(entry.get("jwks")) == bool(entry.get("metadata")):
                raise ValueError(f"{where} ({stream}): give jwks (a file or an https:// URL) or metadata, one of them")
            for key in ("metadata", "poll"):
                if entry.get(key) and not entry[key].startswith("https://"):
                    raise ValueError(f"{where}.{key}: {entry[key]!r} is not an https:// URL")
            if entry.get("jwks", "").startswith("http://"):
                raise ValueError(f"{where}.jwks: keys are fetched over https only")
            if not entry.get("poll") and not self.http_listen:
                raise ValueError(f"{where} ({stream}): SETs are pushed to the HTTP edge: set http_listen, or give poll")
            if entry.get("poll_token_file") and not entry.get("poll"):
                raise ValueError(f"{where}.poll_token_file: only for a transmitter with poll")
            if entry.get("identity", "").startswith("token:") and not self.credentials:
                raise ValueError(f"{where}.identity: a token: identity needs the credentials file (credentials)")

    def _check_downstreams(self) -> None:
        if self.ssf_receivers and self.follow:
            raise ValueError("ssf_receivers: a follower sends no SETs; configure them on the primary")
        if self.ssf_receivers and not self.ssf_key:
            raise ValueError("ssf_key: SETs are signed: give the JWK file of the signing key")
        streams: set[str] = set()
        for i, entry in enumerate(self.ssf_receivers):
            where = f"ssf_receivers[{i}]"
            stream = _stream_table(entry, where, DOWNSTREAM_KEYS, ("stream", "audience"), streams)
            if entry.get("push") and not entry["push"].startswith("https://"):
                raise ValueError(f"{where}.push: {entry['push']!r} is not an https:// URL")
            if not entry.get("push") and not self.http_listen:
                raise ValueError(f"{where} ({stream}): it polls the HTTP edge: set http_listen, or give push")


def _stream_table(entry, where: str, known: tuple[str, ...], required: tuple[str, ...], seen: set[str]) -> str:
    """Check one [[ssf.*]] table (string values of `known` keys, `required` ones given, a new
    stream name); return its stream. Raises ValueError naming `where` and the key."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table")
    for key, value in entry.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"{where}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key}: expected a string")
    for key in required:
        if not entry.get(key):
            raise ValueError(f"{where}.{key}: missing")
    stream = entry["stream"]
    if not _STREAM.fullmatch(stream):
        raise ValueError(f"{where}.stream: {stream!r} is not 1-64 of A-Z a-z 0-9 . _ -")
    if stream in seen:
        raise ValueError(f"{where}.stream: {stream!r} is given twice")
    seen.add(stream)
    return stream
