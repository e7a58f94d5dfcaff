"""Envoy's ext_authz v3 (envoy.service.auth.v3.Authorization/Check) over the one token decision.

Envoy sends the request's attributes; the `authorization` header holds the
bearer token (with `encode_raw_headers` it comes in header_map instead). The
answer is OK with the configured identity headers for the upstream, or
DENIED with HTTP 401 and the RFC 6750 `WWW-Authenticate` header, as the HTTP
edge answers. A node that cannot vouch for its state fails the call
(UNAVAILABLE): with `failure_mode_allow: false` Envoy then refuses the
request. Served on the gRPC port, behind the same gate: Envoy's identity (its
client certificate, or a bearer credential in the grpc_service's
initial_metadata) needs the `check` role.
"""

import logging

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from ..core.errors import RecallError
from ..security import identity
from ..security.gate import Gate
from .decision import Decider, Decision
from .grpc_service import admit
from .http.app import REALM, quoted
from .http.gateway import identity_headers, noted

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Authorization"].full_name


def _token(request: pb.CheckRequest) -> str:
    http = request.attributes.request.http
    value = http.headers.get("authorization", "")
    if not value:
        for header in http.header_map.headers:
            if header.key.lower() == "authorization":
                value = header.value or header.raw_value.decode(errors="replace")
                break
    return identity.bearer(value) or ""


def _presented_by(caller) -> str:
    return f"{caller.identity} ({caller.peer})"


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def answer(decision: Decision, wanted: tuple[tuple[str, str], ...]) -> pb.CheckResponse:
    """The CheckResponse of a decision."""
    if decision.allowed:  # the same answer each time the same decision is reused: built once
        ok = decision.memo.get("ext_authz")
        if ok is None:
            ok = decision.memo["ext_authz"] = pb.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK),
                ok_response=pb.OkHttpResponse(headers=[
                    _header(k, v) for k, v in identity_headers(decision, wanted).items()]))
        return ok
    challenge = f'Bearer realm="{REALM}"'
    if decision.cause != "missing":
        challenge += f', error="invalid_token", error_description="{quoted(decision.description)}"'
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=decision.description),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[_header("WWW-Authenticate", challenge), _header("Cache-Control", "no-store")],
            body=decision.description,
        ),
    )


class ExtAuthz(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization over a Decider."""

    def __init__(self, decider: Decider, gate: Gate, metrics, presented=None) -> None:
        self.decider = decider
        self.gate = gate
        self.metrics = metrics
        self.presented = presented

    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        try:
            caller = admit(self.gate, context, "Check")  # as recall.v1 Check: the check role
            token = _token(request)
            decision = self.decider.known(token) or await self.decider.decide(token)
            noted(self.metrics, self.presented, decision, _presented_by, caller)
        except RecallError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
        except Exception:
            log.exception("ext_authz Check failed")
            await context.abort(grpc.StatusCode.INTERNAL, "ext_authz Check: internal error")
        return answer(decision, self.decider.node.settings.identity_headers)
