"""The caller policy: which identities hold which roles, and which role each call needs.

    [[grant]]
    identities = ["spiffe://example.org/gateway", "dns:gw1.example.org", "cn:ops-laptop", "token:ci-bot"]
    roles = ["check", "introspect"]

With a policy, everything not granted is denied. The roles:
  check       Check, CheckBatch, Watch, Stats, health
  introspect  Introspect (it returns personal data)
  issue       Register, Rotate (the authorization server)
  revoke      Revoke, Cutoff by subject or client
  killswitch  Cutoff by issuer or for everyone
  audit       AuditLog (the trail, a token's trace)
An identity "*" in a grant gives its roles to every authenticated caller.
An OAuth client (HTTP Basic at the OAuth endpoints) acts on its own tokens
without a grant; on other clients' tokens only with a grant naming it,
`client:<client_id>` ("*" does not count there: it is meant for services,
and would hand every client the others' tokens).
"""

import dataclasses
import pathlib
import tomllib

from ..core.errors import InvalidArgument

ROLES = ("check", "introspect", "issue", "revoke", "killswitch", "audit")
METHOD_ROLES = {
    "Check": "check", "CheckBatch": "check", "Watch": "check", "Stats": "check", "Health": "check",
    "Introspect": "introspect", "Register": "issue", "Rotate": "issue", "Revoke": "revoke",
    "AuditLog": "audit",
}
_KILLSWITCH_SCOPES = (3, 4)  # recall.v1.Rule.Scope ISSUER, ALL


def required_role(method: str, cutoff_scope: int = 0) -> str:
    """The role a call of `method` needs (Cutoff: by the scope of its rule)."""
    if method == "Cutoff":
        return "killswitch" if cutoff_scope in _KILLSWITCH_SCOPES else "revoke"
    return METHOD_ROLES[method]


@dataclasses.dataclass(frozen=True)
class Policy:
    """identity -> roles granted."""

    grants: dict[str, frozenset[str]]

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> "Policy":
        """Raises InvalidArgument naming what is wrong."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{source}: not TOML: {exc}") from None
        unknown_keys = set(data) - {"grant"}
        if unknown_keys:
            raise InvalidArgument(f"{source}: unknown key(s) {sorted(unknown_keys)}; expected [[grant]] tables")
        grants: dict[str, set[str]] = {}
        for i, grant in enumerate(data.get("grant", [])):
            identities, roles = grant.get("identities"), grant.get("roles")
            if not isinstance(identities, list) or not all(isinstance(x, str) and x for x in identities):
                raise InvalidArgument(f"{source}: grant[{i}].identities: a list of identity strings")
            if not isinstance(roles, list) or not roles:
                raise InvalidArgument(f"{source}: grant[{i}].roles: a list of roles")
            bad = [r for r in roles if r not in ROLES]
            if bad:
                raise InvalidArgument(f"{source}: grant[{i}].roles: unknown role(s) {bad}; roles are {list(ROLES)}")
            for identity in identities:
                grants.setdefault(identity, set()).update(roles)
        return cls({k: frozenset(v) for k, v in grants.items()})

    @classmethod
    def load(cls, path: pathlib.Path) -> "Policy":
        return cls.parse(pathlib.Path(path).read_text(), str(path))

    def roles_of(self, identity: str) -> frozenset[str]:
        return self.grants.get(identity, frozenset()) | self.grants.get("*", frozenset())

    def allows(self, identity: str, role: str) -> bool:
        return role in self.roles_of(identity)

    def names(self, identity: str, role: str) -> bool:
        """True when a grant naming `identity` itself (not "*") gives it `role`."""
        return role in self.grants.get(identity, frozenset())
