"""JWT verification against configured issuers: keys from files and https URLs, and every way to cheat."""

import asyncio
import json
import ssl
import time

import pytest

from recallcore.core.errors import InvalidArgument, Unavailable
from recallcore.security import jwks
from recallcore.security.jwks import KeySource, parse_jwks
from recallcore.security.jwt_verifier import InvalidToken, JwtVerifier
from tests.api.issuer import ISSUER, Issuer
from tests.security.certs import CA
from tests.support import LocalHttp


def verifier(*issuers: Issuer, **kwargs) -> JwtVerifier:
    kwargs.setdefault("clock", time.time)
    return JwtVerifier({i.name: KeySource(str(i.jwks)) for i in issuers}, **kwargs)


def refused(v: JwtVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        asyncio.run(v.verify(token))
    return caught.value


@pytest.fixture
def idp(tmp_path):
    return Issuer(tmp_path / "idp")


def test_a_good_token_gives_its_claims(idp):
    got = asyncio.run(verifier(idp).verify(idp.token("j-7", azp="ignored")))
    assert (got.issuer, got.jti, got.subject, got.client_id) == (ISSUER, "j-7", "alice", "app")
    assert got.expires_at > time.time() and got.claims["scope"] == "read"


def test_azp_stands_for_client_id_when_there_is_none(idp):
    got = asyncio.run(verifier(idp).verify(idp.token("j", client_id="", azp="spa")))
    assert got.client_id == "spa"


@pytest.mark.parametrize("forge,cause", [
    (lambda i: i.unsigned(), "bad_signature"),
    (lambda i: i.hmac_with_public_key(), "bad_signature"),
    (lambda i: i.tampered(), "bad_signature"),
    (lambda i: i.token(header={"kid": "unknown"}), "bad_signature"),
    (lambda i: i.token(header={"typ": "secevent+jwt"}), "malformed"),
    (lambda i: i.token(jti=""), "malformed"),
    (lambda i: i.token(exp="tomorrow"), "malformed"),
    (lambda i: "eyJ.not.jwt", "malformed"),
])
def test_forged_and_malformed_tokens_are_refused(idp, forge, cause):
    assert refused(verifier(idp), forge(idp)).cause == cause


def test_a_token_of_an_issuer_not_configured_is_refused_before_its_keys_are_looked_at(idp, tmp_path):
    other = Issuer(tmp_path / "other", name="https://other.example")
    error = refused(verifier(idp), other.token())
    assert error.cause == "unknown_issuer" and "https://other.example" in str(error)


def test_a_token_signed_with_another_issuers_key_is_refused(idp, tmp_path):
    other = Issuer(tmp_path / "other", name="https://other.example")
    other.name = ISSUER  # claims to be idp, signed by other's key (same kid)
    assert refused(verifier(idp), other.token()).cause == "bad_signature"


def test_an_algorithm_off_the_allow_list_is_refused(idp):
    assert refused(verifier(idp, algorithms=("RS256",)), idp.token()).cause == "bad_signature"
    with pytest.raises(ValueError, match="HS256"):
        verifier(idp, algorithms=("RS256", "HS256"))


def test_times_are_judged_with_the_clock_skew(idp):
    now = time.time()
    v = verifier(idp, skew=60)
    assert asyncio.run(v.verify(idp.token("a", exp=int(now) - 30)))  # within the skew
    assert refused(v, idp.token("b", exp=int(now) - 61)).cause == "expired"
    assert refused(v, idp.token("c", nbf=int(now) + 120)).cause == "not_yet_valid"
    assert refused(v, idp.token("d", iat=int(now) + 120)).cause == "not_yet_valid"
    assert refused(v, idp.token("e", exp=None)).cause == "malformed"


def test_a_cached_token_is_judged_on_time_again(idp):
    clock = [time.time()]
    v = verifier(idp, clock=lambda: clock[0], skew=0)
    token = idp.token("j", exp=int(clock[0]) + 10)
    asyncio.run(v.verify(token))
    clock[0] += 11
    assert refused(v, token).cause == "expired"

    start = int(clock[0])
    early = idp.token("k", nbf=start + 5, exp=start + 20)
    clock[0] = start
    assert refused(v, early).cause == "not_yet_valid"  # verified (and remembered), not valid yet
    clock[0] = start + 5
    assert v.remembered(early).jti == "k"  # from its nbf on, without a second signature check
    clock[0] = start + 19.9
    assert v.remembered(early).jti == "k"
    clock[0] = start + 20  # at exp itself (skew 0): expired
    with pytest.raises(InvalidToken, match="expired"):
        v.remembered(early)


def test_the_audience_is_checked_when_configured(idp):
    v = verifier(idp, audience="https://api.example")
    assert asyncio.run(v.verify(idp.token("a", aud=["x", "https://api.example"])))
    assert asyncio.run(v.verify(idp.token("b", aud="https://api.example")))
    assert refused(v, idp.token("c", aud="https://other.example")).cause == "audience"
    assert refused(v, idp.token("d")).cause == "audience"


def test_a_key_withdrawn_from_the_file_stops_tokens_it_signed_even_cached(idp, monkeypatch):
    monkeypatch.setattr(jwks, "FILE_CHECK_EVERY", 0.0)
    v = verifier(idp)
    old = idp.token("old")
    asyncio.run(v.verify(old))
    idp.rotate("k2")
    idp.publish("k2")  # k1 withdrawn (say, it leaked)
    assert refused(v, old).cause == "bad_signature"
    assert asyncio.run(v.verify(idp.token("new"))).jti == "new"


@pytest.mark.parametrize("doc,problem", [
    ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "not a public key type"),
    ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}]}, "private key"),
    ({"keys": []}, "no signing key"),
    ({"nokeys": 1}, "expected a JWKS"),
])
def test_a_jwks_with_symmetric_private_or_no_keys_is_refused_by_name(doc, problem):
    with pytest.raises(InvalidArgument, match=problem):
        parse_jwks(json.dumps(doc), "idp.json")


class JwksServer:
    """An https server of one JWKS file, counting its fetches."""

    def __init__(self, ca: CA, issuer: Issuer) -> None:
        leaf = ca.server("jwks")
        self.fetches = 0
        self.failing = False
        self.issuer_jwks = issuer.jwks.read_bytes
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf.cert, leaf.key)
        self.http = LocalHttp(self._respond, context)
        self.url = f"https://{self.http.address}/jwks.json"

    def _respond(self, request) -> tuple[int, bytes]:
        self.fetches += 1
        return (500, b"") if self.failing else (200, self.issuer_jwks())

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def served(tmp_path, idp):
    ca = CA(tmp_path / "ca")
    server = JwksServer(ca, idp)
    yield server, ca
    server.close()


def test_keys_from_a_url_are_fetched_once_and_again_for_a_new_kid(idp, served, monkeypatch):
    server, ca = served
    monkeypatch.setattr(jwks, "REFETCH_EVERY", 0.0)

    async def scenario():
        v = JwtVerifier({ISSUER: KeySource(server.url, str(ca.path))}, clock=time.time)
        try:
            await v.verify(idp.token("a"))
            await v.verify(idp.token("b"))
            assert server.fetches == 1
            idp.rotate("k2")
            idp.publish()
            assert (await v.verify(idp.token("c"))).jti == "c"  # unknown kid: fetched again
            assert server.fetches == 2
        finally:
            await v.close()

    asyncio.run(scenario())


def test_made_up_kids_do_not_turn_into_a_flood_of_fetches(idp, served):
    server, ca = served

    async def scenario():
        v = JwtVerifier({ISSUER: KeySource(server.url, str(ca.path))}, clock=time.time)
        try:
            await v.verify(idp.token("a"))
            for i in range(20):
                with pytest.raises(InvalidToken):
                    await v.verify(idp.token(f"x{i}", header={"kid": f"made-up-{i}"}))
            assert server.fetches <= 2
        finally:
            await v.close()

    asyncio.run(scenario())


def test_a_stale_key_set_of_an_issuer_that_cannot_be_reached_is_not_fetched_for_every_token(
        idp, served, monkeypatch):
    server, ca = served

    async def scenario():
        v = JwtVerifier({ISSUER: KeySource(server.url, str(ca.path))}, clock=time.time)
        try:
            await v.verify(idp.token("a"))
            server.failing = True
            monkeypatch.setattr(jwks, "MAX_AGE", 0.0)  # the set held is stale from now on
            for i in range(20):  # new tokens, each needing its key: the keys held still verify them
                assert (await v.verify(idp.token(f"t{i}"))).jti == f"t{i}"
            assert server.fetches <= 2
        finally:
            await v.close()

    asyncio.run(scenario())


def test_keys_that_cannot_be_fetched_make_the_issuer_unavailable_not_its_tokens_bad(idp, served):
    server, ca = served
    server.failing = True

    async def scenario():
        v = JwtVerifier({ISSUER: KeySource(server.url, str(ca.path))}, clock=time.time)
        try:
            with pytest.raises(Unavailable, match="could not be fetched"):
                await v.verify(idp.token("a"))
        finally:
            await v.close()

    asyncio.run(scenario())


def test_an_untrusted_jwks_server_is_not_believed(idp, served):
    server, _ = served  # no CA given: the system's store does not know the test CA

    async def scenario():
        v = JwtVerifier({ISSUER: KeySource(server.url)}, clock=time.time)
        try:
            with pytest.raises(Unavailable):
                await v.verify(idp.token("a"))
            assert server.fetches == 0  # the handshake failed before any request
        finally:
            await v.close()

    asyncio.run(scenario())


def test_plain_http_key_urls_are_refused():
    with pytest.raises(InvalidArgument, match="https only"):
        KeySource("http://idp.example/jwks.json")
