"""Token Status Lists, read back the way the draft tells a verifier to, by code written from the draft.

The decoder here shares nothing with the server's encoder: the signature is
checked with `cryptography` against the served JWKS, `lst` is base64url
decoded and zlib inflated, and status i is bit i % 8 of byte i // 8 (least
significant first). Every serial's bit is compared with CheckBatch.
"""

import base64
import dataclasses
import json
import zlib

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.jwk import ECKey
from recallclient import RecallClient, TokenSpec, TokenState, TokenType

from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..support import FakeClock, ServerThread, until

SIZE = 64  # statuses per list: small, so that tokens span lists
BASE = "https://recall.example/statuslists"


def b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_list(http: httpx.Client, number: int) -> tuple[dict, list[int]]:
    """(claims, statuses) of list `number`, verified as a relying party would."""
    response = http.get(f"/statuslists/{number}", headers={"Accept": "application/statuslist+jwt"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/statuslist+jwt")
    head, body, signature = response.text.split(".")
    header = json.loads(b64(head))
    assert header["typ"] == "statuslist+jwt" and header["alg"] == "ES256"
    (jwk,) = [k for k in http.get("/statuslists/jwks.json").json()["keys"] if k["kid"] == header["kid"]]
    x, y = (int.from_bytes(b64(jwk[c]), "big") for c in ("x", "y"))
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raw = b64(signature)
    public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                  f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    claims = json.loads(b64(body))
    assert claims["status_list"]["bits"] == 1
    packed = zlib.decompress(b64(claims["status_list"]["lst"]))
    return claims, [(packed[i // 8] >> (i % 8)) & 1 for i in range(len(packed) * 8)]


@pytest.fixture
def signing_key(tmp_path):
    path = tmp_path / "status-key.json"
    path.write_text(json.dumps(ECKey.generate_key("P-256", parameters={"kid": "lists-1"}).as_dict(private=True)))
    return path


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def lists(settings, signing_key, clock):
    srv = ServerThread(dataclasses.replace(
        settings, http_listen="127.0.0.1:0", status_list_uri=BASE, status_list_key=str(signing_key),
        status_list_size=SIZE, status_list_interval=0.01), clock=clock)
    with RecallClient(srv.address) as recall, \
            httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
        yield srv, recall, http
    srv.stop()


def test_register_returns_where_each_token_status_is_published(lists):
    _, recall, _ = lists
    tokens = recall.register([TokenSpec(f"u{i}", "app") for i in range(70)]).tokens
    assert [(t.status_uri, t.status_idx) for t in (tokens[0], tokens[63], tokens[64], tokens[69])] == [
        (f"{BASE}/0", 0), (f"{BASE}/0", 63), (f"{BASE}/1", 0), (f"{BASE}/1", 5)]


def test_every_bit_matches_checkbatch_revoked_rotated_and_expired_included(lists, clock):
    srv, recall, http = lists
    short = [TokenSpec(f"s{i}", "app", expires_at=clock.now + 30) for i in range(5)]
    tokens = recall.register([TokenSpec(f"u{i}", "app") for i in range(90)] + short).tokens
    refresh = recall.register_one("r", "app", type=TokenType.REFRESH, family="f")
    recall.revoke(serials=[t.serial for t in tokens[::7]])
    recall.rotate(refresh.serial, successor=TokenSpec("", ""))
    clock.advance(60)  # the short ones expire
    serials = [t.serial for t in tokens] + [refresh.serial]
    states = dict(zip(serials, recall.check_batch(serials).states))
    assert {TokenState.ACTIVE, TokenState.REVOKED, TokenState.EXPIRED, TokenState.ROTATED} <= set(states.values())
    for number in (0, 1):
        claims, bits = read_list(http, number)
        assert claims["sub"] == f"{BASE}/{number}" and claims["iat"] == clock.now
        assert claims["exp"] > claims["iat"] and claims["ttl"] == 60
        assert len(bits) == SIZE
        for idx, bit in enumerate(bits):
            serial = number * SIZE + idx + 1
            if serial in states:
                assert bit == (states[serial] != TokenState.ACTIVE), (serial, states[serial])
            else:
                assert bit == 0  # not issued yet


def test_a_revocation_shows_in_the_list_and_the_etag_changes(lists):
    _, recall, http = lists
    token = recall.register_one("alice", "app")
    first = http.get("/statuslists/0")
    assert http.get("/statuslists/0", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert first.headers["Cache-Control"] == "max-age=60"
    recall.revoke(serials=[token.serial])
    until(lambda: read_list(http, 0)[1][token.status_idx] == 1, "the revocation in the list")
    assert http.get("/statuslists/0").headers["ETag"] != first.headers["ETag"]


def test_a_storm_of_changes_rebuilds_a_list_at_most_once_per_interval(settings, signing_key, clock):
    srv = ServerThread(dataclasses.replace(
        settings, http_listen="127.0.0.1:0", status_list_uri=BASE, status_list_key=str(signing_key),
        status_list_size=SIZE, status_list_interval=3600), clock=clock)
    try:
        with RecallClient(srv.address) as recall, httpx.Client(base_url=f"http://{srv.server.http.address}") as http:
            tokens = recall.register([TokenSpec(f"u{i}", "app") for i in range(40)]).tokens
            first = http.get("/statuslists/0").text
            for token in tokens:
                recall.revoke(serials=[token.serial])
                assert http.get("/statuslists/0").text == first  # served as built, within the interval
            assert srv.server.http.edge.status_lists.builds == 1
            clock.advance(31)  # half the ttl: signed anew, and so built anew
            assert sum(read_list(http, 0)[1]) == 40
    finally:
        srv.stop()


def test_unknown_lists_and_the_cwt_form_are_refused(lists):
    _, recall, http = lists
    recall.register_one("alice", "app")
    assert http.get("/statuslists/1").status_code == 404
    assert http.get("/statuslists/0", headers={"Accept": "application/statuslist+cwt"}).status_code == 406
    assert http.get("/statuslists/x").status_code == 404


def test_a_follower_serves_the_same_statuses(lists, servers, tmp_path, signing_key):
    srv, recall, http = lists
    tokens = recall.register([TokenSpec(f"u{i}", "app") for i in range(20)]).tokens
    recall.revoke(serials=[tokens[3].serial, tokens[11].serial])
    follower = servers.start(Settings(
        data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=srv.address, http_listen="127.0.0.1:0",
        status_list_uri=BASE, status_list_key=str(signing_key), status_list_size=SIZE))
    until(lambda: follower.engine.state.seq == srv.engine.state.seq, "the follower in sync")
    with httpx.Client(base_url=f"http://{follower.server.http.address}") as edge:
        assert read_list(edge, 0)[1] == read_list(http, 0)[1]


def test_a_key_file_that_is_no_private_key_stops_the_start(settings, tmp_path):
    public = tmp_path / "public.json"
    public.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=False)))
    with pytest.raises(Exception, match="expected a private EC, RSA or OKP JWK"):
        ServerThread(dataclasses.replace(settings, http_listen="127.0.0.1:0", status_list_uri=BASE,
                                         status_list_key=str(public)))


def test_under_a_policy_fetching_a_list_needs_the_check_role(settings, signing_key, tmp_path):
    (tmp_path / "policy.toml").write_text('[[grant]]\nidentities = ["token:cache"]\nroles = ["check"]\n\n'
                                          '[[grant]]\nidentities = ["token:auditor"]\nroles = ["audit"]\n')
    (tmp_path / "creds.toml").write_text(f'[tokens]\ncache = "{hash_secret("secret-of-the-list-cache")}"\n'
                                         f'auditor = "{hash_secret("secret-of-the-auditor-user")}"\n')
    srv = ServerThread(dataclasses.replace(
        settings, http_listen="127.0.0.1:0", status_list_uri=BASE, status_list_key=str(signing_key),
        status_list_size=SIZE, policy=str(tmp_path / "policy.toml"), credentials=str(tmp_path / "creds.toml")))
    try:
        srv.call(srv.engine.register([TokenSpec("alice", "app")]))
        with httpx.Client(base_url=f"http://{srv.server.http.address}") as http:
            for path in ("/statuslists/0", "/statuslists/jwks.json"):
                assert http.get(path).status_code == 401
                assert http.get(path, headers={"Authorization": "Bearer secret-of-the-auditor-user"}).status_code \
                    == 403
                assert http.get(path, headers={"Authorization": "Bearer secret-of-the-list-cache"}).status_code \
                    == 200
    finally:
        srv.stop()
