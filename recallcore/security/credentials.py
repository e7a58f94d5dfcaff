"""Bearer credentials: a TOML file of names and the hashes of their secrets.

    [tokens]
    ci-bot = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

Only hashes are stored: a secret is a random string handed to its holder
once (`recallcore hash-token` prints the line for a secret read from stdin).
Secrets are high-entropy, so one SHA-256 is enough; comparison is by the
hash's value, in constant time. A caller presenting a secret gets the
identity `token:<name>`.
"""

import hashlib
import hmac
import pathlib
import tomllib

from ..core.errors import InvalidArgument

SCHEME = "sha256:"


def hash_secret(secret: str) -> str:
    """The value the credentials file stores for `secret`."""
    return SCHEME + hashlib.sha256(secret.encode()).hexdigest()


class Credentials:
    """Name -> secret hash, from one file."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._by_hash: dict[str, str] = {}
        for name, stored in tokens.items():
            if not isinstance(stored, str) or not stored.startswith(SCHEME) or len(stored) != len(SCHEME) + 64:
                raise InvalidArgument(f"tokens.{name}: expected \"{SCHEME}<64 hex digits>\"")
            self._by_hash[stored.lower()] = name

    @classmethod
    def load(cls, path: pathlib.Path) -> "Credentials":
        """Parse the file; raises InvalidArgument (or OSError) saying what is wrong."""
        try:
            data = tomllib.loads(pathlib.Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path}: not TOML: {exc}") from None
        tokens = data.get("tokens", {})
        if not isinstance(tokens, dict):
            raise InvalidArgument(f"{path}: [tokens] must be a table of name = \"{SCHEME}...\"")
        return cls(tokens)

    def identify(self, secret: str) -> str | None:
        """The identity of a presented secret, or None when no credential has it."""
        wanted = hash_secret(secret)
        for stored, name in self._by_hash.items():
            if hmac.compare_digest(stored, wanted):
                return f"token:{name}"
        return None
