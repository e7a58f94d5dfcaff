"""Server TLS from PEM files, reloaded when they change, without dropping open connections.

grpc's dynamic server credentials ask `fetch` at each new handshake; it
answers a new configuration when the certificate, key or client CA file
changed since the last look (and None otherwise), so established streams
keep their connection while new ones get the new certificate. A set of
files that no longer loads keeps the previous configuration and is logged.
The HTTP listener gets an SSLContext from the same files that looks at them
at each handshake (its SNI callback) and swaps in a new context when they
changed.
"""

import logging
import os
import pathlib
import ssl
import threading

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    """The server's certificate chain, key and (optional) client CA, from files."""

    def __init__(self, cert: pathlib.Path, key: pathlib.Path, client_ca: pathlib.Path | None) -> None:
        self.paths = [pathlib.Path(cert), pathlib.Path(key)] + ([pathlib.Path(client_ca)] if client_ca else [])
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.configuration = self._load()  # the first load's errors are raised

    def _stamps(self) -> tuple:
        return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, self.paths))

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self.paths[0].read_bytes(), self.paths[1].read_bytes()
        ca = self.paths[2].read_bytes() if len(self.paths) > 2 else None
        if b"PRIVATE KEY" not in key or b"CERTIFICATE" not in cert:
            raise ValueError(f"{self.paths[0]} / {self.paths[1]}: not a PEM certificate and private key")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed; None to keep the current one."""
        with self._lock:
            try:
                stamp = self._stamps()
                if stamp == self._stamp:
                    return None
                self._stamp = stamp
                self.configuration = self._load()
            except (OSError, ValueError) as exc:
                log.warning("TLS files did not load, keeping the previous certificate: %s", exc)
                return None
            log.info("TLS certificate reloaded from %s", self.paths[0])
            return self.configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials; with a client CA, every caller must present a certificate it signed."""
        return grpc.dynamic_ssl_server_credentials(self.configuration, self.fetch,
                                                   require_client_authentication=len(self.paths) > 2)

    def ssl_context(self) -> ssl.SSLContext:
        """A server SSLContext (TLS 1.2+) for the HTTP listener, reloaded as the files change.

        With a client CA a certificate is asked for and, when presented, must
        verify (CERT_OPTIONAL): HTTP callers may authenticate by certificate,
        bearer credential or, at the OAuth endpoints, client secret.
        """
        with self._lock:
            self._http_stamp = self._stamps()
            self._http = self._http_context()
        return self._http

    def _http_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.paths[0], self.paths[1])
        if len(self.paths) > 2:
            context.load_verify_locations(cafile=self.paths[2])
            context.verify_mode = ssl.CERT_OPTIONAL
        context.sni_callback = self._handshake
        return context

    def _handshake(self, ssl_object: ssl.SSLObject, _name, _context) -> None:
        with self._lock:
            try:
                stamp = self._stamps()
                if stamp != self._http_stamp:
                    self._http_stamp = stamp
                    self._http = self._http_context()
                    log.info("TLS certificate of the HTTP listener reloaded from %s", self.paths[0])
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning("TLS files did not load, keeping the previous certificate: %s", exc)
            ssl_object.context = self._http
