"""A token issuer for the edge tests: keys, its JWKS file, and signed (or forged) tokens."""

import base64
import hashlib
import hmac
import json
import pathlib
import time

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ISSUER = "https://idp.example"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Signs tokens as `name` with an EC key (kid "k1"); `jwks` is the file of its public keys."""

    def __init__(self, root: pathlib.Path, name: str = ISSUER, kid: str = "k1") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.keys = {kid: ECKey.generate_key("P-256", parameters={"kid": kid})}
        self.kid = kid
        self.jwks = root / f"jwks-{hashlib.sha256(name.encode()).hexdigest()[:8]}.json"
        self.publish()

    def publish(self, *kids: str) -> None:
        """Write the JWKS with the public keys `kids` (default: all)."""
        chosen = [self.keys[k] for k in (kids or self.keys)]
        self.jwks.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in chosen]}))

    def rotate(self, kid: str, rsa: bool = False) -> None:
        """Add a key and sign with it from now on (publish() to make it known)."""
        self.keys[kid] = RSAKey.generate_key(2048, parameters={"kid": kid}) if rsa else \
            ECKey.generate_key("P-256", parameters={"kid": kid})
        self.kid = kid

    def claims(self, jti: str, **extra) -> dict:
        now = int(time.time())
        return {"iss": self.name, "sub": "alice", "client_id": "app", "jti": jti, "iat": now, "exp": now + 600,
                "scope": "read", **extra}

    def token(self, jti: str = "jti-1", header: dict | None = None, **claims) -> str:
        key = self.keys[self.kid]
        alg = "RS256" if isinstance(key, RSAKey) else "ES256"
        return jwt.encode({"alg": alg, "kid": self.kid, "typ": "at+jwt", **(header or {})},
                          self.claims(jti, **claims), key)

    def unsigned(self, jti: str = "jti-1", **claims) -> str:
        """alg "none": no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(jti, **claims)).encode())}."

    def hmac_with_public_key(self, jti: str = "jti-1") -> str:
        """HS256 keyed with the issuer's public JWK: the classic algorithm confusion."""
        header = _b64(json.dumps({"alg": "HS256", "kid": self.kid}).encode())
        body = _b64(json.dumps(self.claims(jti)).encode())
        secret = self.jwks.read_bytes()
        sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(sig)}"

    def tampered(self, jti: str = "jti-1") -> str:
        """A good token whose payload was changed after signing (another subject)."""
        head, _, sig = self.token(jti).split(".")
        body = _b64(json.dumps(self.claims(jti, sub="mallory")).encode())
        return f"{head}.{body}.{sig}"
