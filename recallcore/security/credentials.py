"""Bearer credentials: a TOML file of names and the hashes of their secrets.

    [tokens]
    ci-bot = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

Only hashes are stored: a secret is a random string handed to its holder
once (`recallcore hash-token` prints the line for a secret read from stdin).
Secrets are high-entropy, so one SHA-256 is enough; comparison is by the
hash's value, in constant time. A caller presenting a secret gets the
identity `token:<name>`.

The OAuth clients file of the HTTP edge has the same form under [clients]:
the client_id, and the hash of the client secret it authenticates with
(HTTP Basic, RFC 6749 section 2.3.1); such a caller is `client:<client_id>`.
"""

import hashlib
import hmac
import pathlib
import tomllib

from ..core.errors import InvalidArgument

SCHEME = "sha256:"


def hash_secret(secret: str) -> str:
    """The value the credentials file stores for `secret`."""
    # surrogateescape: a header's bytes that are not UTF-8 (aiohttp keeps them so) hash as they came
    return SCHEME + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class Credentials:
    """Name -> secret hash, from one file (table "tokens"; "clients" for OAuth clients)."""

    def __init__(self, tokens: dict[str, str], table: str = "tokens") -> None:
        self._by_hash: dict[str, str] = {}
        self._by_name: dict[str, str] = {}
        for name, stored in tokens.items():
            if not isinstance(stored, str) or not stored.startswith(SCHEME) or len(stored) != len(SCHEME) + 64:
                raise InvalidArgument(f"{table}.{name}: expected \"{SCHEME}<64 hex digits>\"")
            self._by_hash[stored.lower()] = name
            self._by_name[name] = stored.lower()

    @classmethod
    def load(cls, path: pathlib.Path, table: str = "tokens") -> "Credentials":
        """Parse the file; raises InvalidArgument (or OSError) saying what is wrong."""
        try:
            data = tomllib.loads(pathlib.Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path}: not TOML: {exc}") from None
        tokens = data.get(table, {})
        if not isinstance(tokens, dict):
            raise InvalidArgument(f"{path}: [{table}] must be a table of name = \"{SCHEME}...\"")
        return cls(tokens, table)

    @classmethod
    def load_clients(cls, path: pathlib.Path) -> "Credentials":
        """The OAuth clients file: [clients] client_id = "sha256:..."."""
        return cls.load(path, "clients")

    def identify(self, secret: str) -> str | None:
        """The identity of a presented secret, or None when no credential has it."""
        wanted = hash_secret(secret)
        for stored, name in self._by_hash.items():
            if hmac.compare_digest(stored, wanted):
                return f"token:{name}"
        return None

    def verify(self, name: str, secret: str) -> bool:
        """True when `secret` is the one of `name` (an OAuth client's id and secret)."""
        stored = self._by_name.get(name)
        # Compared even for an unknown name, so timing does not tell which ids exist.
        return hmac.compare_digest(stored or SCHEME + "0" * 64, hash_secret(secret)) and stored is not None
