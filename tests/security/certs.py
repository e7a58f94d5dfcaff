"""Test certificates made with `cryptography`: a CA, server and client leaves, expired ones."""

import dataclasses
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_NOW = datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclasses.dataclass
class Leaf:
    cert: pathlib.Path
    key: pathlib.Path
    serial: int


class CA:
    """A certificate authority writing its files under `root`."""

    def __init__(self, root: pathlib.Path, name: str = "test ca") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_NOW - datetime.timedelta(days=1))
                     .not_valid_after(_NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = root / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, cn: str = "", dns: tuple[str, ...] = (), uris: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), expired: bool = False) -> Leaf:
        key = _key()
        sans = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris] + \
            [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        start, end = (_NOW - datetime.timedelta(days=10), _NOW - datetime.timedelta(days=1)) if expired else \
            (_NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30))
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        leaf = Leaf(self.root / f"{name}.crt", self.root / f"{name}.key", cert.serial_number)
        leaf.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        leaf.key.write_bytes(_pem_key(key))
        return leaf

    def server(self, name: str = "server") -> Leaf:
        return self.issue(name, cn="recallcore test server", dns=("localhost",), ips=("127.0.0.1",))
