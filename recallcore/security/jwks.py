"""The public keys of a token issuer: a JWKS from a file, or from an https URL, cached.

Theory of operation. A `KeySource` holds the keys of one issuer by kid. A
file is read at start (its errors stop the start) and again when it
changes. A URL is fetched on first use and kept; it is fetched again when a
token names a kid the cached set does not hold (an issuer that rotated its
keys), at most once per REFETCH_EVERY (a flood of made-up kids must not
turn into a flood of fetches), and in any case once the set is older than
MAX_AGE. A fetch that fails keeps the keys already held; a source that
never held keys raises Unavailable, so tokens of that issuer are refused
with 503 rather than judged.

Only public asymmetric keys are accepted (RSA, EC, OKP): a symmetric ("oct")
or private key in a published set is refused by name, which also rules out
the confusion of verifying an HMAC signature with a public key.
"""

import asyncio
import json
import logging
import os
import pathlib
import ssl
import time

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from ..core.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

REFETCH_EVERY = 10.0  # seconds: the soonest a URL is fetched again for an unknown kid
FILE_CHECK_EVERY = 1.0  # seconds between looks at a key file's modification time
MAX_AGE = 3600.0  # seconds a fetched set is used before it is fetched again
FETCH_TIMEOUT = 5.0  # seconds for one fetch
MAX_JWKS_BYTES = 1 << 20
_KEY_TYPES = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}

Key = RSAKey | ECKey | OKPKey


def parse_jwks(text: str | bytes, source: str) -> dict[str, Key]:
    """kid -> public key of a JWKS document; raises InvalidArgument naming the source and key."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{source}: not JSON: {exc}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise InvalidArgument(f"{source}: expected a JWKS, an object with a \"keys\" list")
    out: dict[str, Key] = {}
    for i, jwk in enumerate(keys):
        where = f"{source}: keys[{i}]"
        if not isinstance(jwk, dict):
            raise InvalidArgument(f"{where}: not an object")
        kty = jwk.get("kty")
        if kty not in _KEY_TYPES:
            raise InvalidArgument(f"{where}.kty: {kty!r} is not a public key type (RSA, EC or OKP)")
        if "d" in jwk:
            raise InvalidArgument(f"{where}: holds a private key; publish only the public part")
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key: not for verifying tokens
        try:
            key = _KEY_TYPES[kty].import_key(jwk)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        kid = jwk.get("kid", "")
        if kid in out:
            raise InvalidArgument(f"{where}.kid: {kid!r} appears twice")
        out[kid] = key
    if not out:
        raise InvalidArgument(f"{source}: holds no signing key")
    return out


class KeySource:
    """The signing keys of one issuer, from `location` (a file path or an https:// URL)."""

    def __init__(self, location: str, cacert: str = "") -> None:
        self.location = location
        self.remote = location.startswith("https://")
        if location.startswith("http://"):
            raise InvalidArgument(f"jwt_issuers: {location}: keys are fetched over https only")
        self._cacert = cacert
        self._keys: dict[str, Key] = {}
        self._fetched = -float("inf")  # monotonic time of the last fetch attempt
        self._loaded_at = -float("inf")  # ... and of the last one that succeeded
        self._stamp: tuple | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        if not self.remote:
            self._read_file()

    def _read_file(self) -> None:
        path = pathlib.Path(self.location)
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._keys = parse_jwks(path.read_bytes(), str(path))
            self._stamp = stamp

    def _look_at_file(self) -> None:
        now = time.monotonic()
        if now - self._fetched < FILE_CHECK_EVERY:
            return
        self._fetched = now
        try:
            self._read_file()
        except (OSError, InvalidArgument) as exc:
            log.warning("keys %s did not load, keeping the previous ones: %s", self.location, exc)

    async def key(self, kid: str) -> Key | None:
        """The key named `kid` ("" for a token that names none: the set's only key); None when unknown.

        Raises Unavailable when the keys cannot be had at all.
        """
        if not self.remote:
            self._look_at_file()
            return self._pick(kid)
        if time.monotonic() - self._loaded_at > MAX_AGE or self._pick(kid) is None:
            await self._refresh()
        if not self._keys:
            raise Unavailable(f"the signing keys of {self.location} could not be fetched; retry shortly")
        return self._pick(kid)

    def holds(self, kid: str, key: Key) -> bool:
        """True while `key` is still this issuer's key `kid` (a verified token stays good)."""
        if not self.remote:
            self._look_at_file()
        return self._pick(kid) is key

    def _pick(self, kid: str) -> Key | None:
        if kid:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            # At most once per REFETCH_EVERY, for a set gone stale too: while the issuer cannot be
            # reached, every new token must not wait on a fetch of its own.
            if now - self._fetched < REFETCH_EVERY:
                return
            self._fetched = now
            try:
                self._keys = parse_jwks(await self.fetch(), self.location)
                self._loaded_at = now
                log.info("fetched the signing keys of %s (%d keys)", self.location, len(self._keys))
            except (aiohttp.ClientError, TimeoutError, InvalidArgument, ssl.SSLError, OSError) as exc:
                log.warning("cannot fetch %s: %s%s", self.location, exc,
                            "; keeping the keys held" if self._keys else "")

    async def fetch(self) -> bytes:
        """The document at the https location (at most MAX_JWKS_BYTES); raises aiohttp.ClientError,
        TimeoutError, ssl.SSLError, OSError or InvalidArgument (too large)."""
        if self._session is None:
            context = ssl.create_default_context(cafile=self._cacert or None)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            )
        async with self._session.get(self.location, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                  message=f"HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise InvalidArgument(f"{self.location}: larger than {MAX_JWKS_BYTES} bytes")
            return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
