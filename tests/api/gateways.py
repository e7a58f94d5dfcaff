"""What the gateway tests share: the API behind the gateway, and the gateway's trust material."""

import pathlib
import subprocess

import httpx

from ..security.certs import CA
from ..support import STARTUP_TIMEOUT, LocalHttp, until


def Upstream() -> LocalHttp:
    """The API behind the gateway: answers 200 naming the subject the gateway handed it."""
    return LocalHttp(lambda request: (200, f"hello {request.headers.get('X-Recall-Subject', '?')}".encode()))


def write_trust(root: pathlib.Path) -> tuple[CA, pathlib.Path, pathlib.Path]:
    """The CA, the gateway's and an operator's certificates (as the deploy/ configs name them), the policy."""
    ca = CA(root)
    gateway = ca.issue("gateway", dns=("gateway.example",))
    (root / "ca.pem").write_bytes(ca.path.read_bytes())
    gateway.cert.rename(root / "gateway.crt")
    gateway.key.rename(root / "gateway.key")
    ca.issue("operator", dns=("operator.example",))  # gRPC takes mutual TLS only
    policy = root / "policy.toml"
    policy.write_text('[[grant]]\nidentities = ["dns:gateway.example"]\nroles = ["check"]\n\n'
                      '[[grant]]\nidentities = ["dns:operator.example"]\nroles = ["revoke", "issue", "check"]\n')
    return ca, policy, root


class Gateway:
    """A gateway process (nginx, Envoy) on a free port running a deploy/ config with its
    placeholders replaced; its output goes to a log file quoted when it dies."""

    name = "gateway"

    def __init__(self, root: pathlib.Path, config: pathlib.Path, address: str, replace: list[tuple[str, str]]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.address = address
        text = config.read_text()
        for placeholder, value in replace:
            assert placeholder in text, placeholder
            text = text.replace(placeholder, value)
        self.config = root / config.name
        self.config.write_text(text)

    def start(self, args: list[str], timeout: float = STARTUP_TIMEOUT) -> None:
        self.log = open(self.root / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        until(self._up, f"{self.name} listening", timeout)

    def _up(self) -> bool:
        assert self.proc.poll() is None, (self.root / f"{self.name}.log").read_text()
        try:
            httpx.get(f"http://{self.address}/", timeout=1)
        except httpx.TransportError:
            return False
        return True

    def get(self, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"http://{self.address}/orders", headers=headers, timeout=10)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(STARTUP_TIMEOUT)
        finally:
            self.log.close()
