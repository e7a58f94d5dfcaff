"""Who a caller is: read from its TLS client certificate or its bearer credential.

Pure: the adapters pass what their transport knows (gRPC's auth context, an
HTTP request's headers); nothing here does I/O.

An identity is a string, as the policy file names it:
  spiffe://trust-domain/path   the certificate's SPIFFE ID (a URI SAN)
  uri:<uri>                    another URI SAN
  dns:<name>                   the first DNS SAN
  cn:<common name>             the subject's CN, when there is no SAN
  token:<name>                 a bearer credential of the credentials file
"""

import dataclasses
from collections.abc import Mapping

ANONYMOUS = "anonymous"


@dataclasses.dataclass(frozen=True)
class Caller:
    """An authenticated caller: its identity and where it called from."""

    identity: str
    peer: str = ""

    @property
    def anonymous(self) -> bool:
        return self.identity == ANONYMOUS


def _first(auth: Mapping[str, list[bytes]], key: str) -> str:
    values = auth.get(key) or []
    return values[0].decode(errors="replace") if values else ""


def from_certificate(auth: Mapping[str, list[bytes]]) -> str:
    """The identity of a verified client certificate in a gRPC auth context; "" when there is none."""
    if not auth.get("x509_pem_cert"):
        return ""
    spiffe = _first(auth, "peer_spiffe_id")
    if spiffe:
        return spiffe
    uri = _first(auth, "peer_uri")
    if uri:
        return uri if uri.startswith("spiffe://") else f"uri:{uri}"
    dns = _first(auth, "peer_dns")
    if dns:
        return f"dns:{dns}"
    cn = _first(auth, "x509_common_name")
    return f"cn:{cn}" if cn else ""


def bearer(authorization: str) -> str | None:
    """The secret of an `authorization: Bearer <secret>` value; None when it is no bearer credential."""
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def from_peercert(cert: Mapping | None) -> str:
    """The identity of a verified client certificate as Python's ssl gives it (getpeercert()); "" for none.

    The same order as from_certificate: SPIFFE ID, another URI SAN, the first DNS SAN, the CN.
    """
    if not cert:
        return ""
    sans = cert.get("subjectAltName", ())
    uris = [v for k, v in sans if k == "URI"]
    spiffe = next((u for u in uris if u.startswith("spiffe://")), "")
    if spiffe or uris:
        return spiffe or f"uri:{uris[0]}"
    dns = next((v for k, v in sans if k == "DNS"), "")
    if dns:
        return f"dns:{dns}"
    cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
    return f"cn:{cn}" if cn else ""
