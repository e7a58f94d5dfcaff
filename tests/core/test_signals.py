"""recallcore.core.signals: what a SET asks, and an Engine applying it once, on every store."""

import pytest
from recallclient.types import JtiRef, TokenState

from recallcore.core.audit import AuditQuery
from recallcore.core.signals import CAEP, OAUTH, RISC, BadEvent, Recall, recall_of

from .test_operations import make_harness, spec
from .test_operations_model import START, FakeClock

IDP = "https://idp.example"
ALICE = {"format": "iss_sub", "iss": IDP, "sub": "alice"}


def claims(event: str, subject: dict | None = ALICE, payload: dict | None = None, **extra) -> dict:
    out = {"iss": IDP, "jti": "set-1", "iat": START, "events": {event: payload or {}}, **extra}
    if subject is not None:
        out["sub_id"] = subject
    return out


@pytest.mark.parametrize("event", [
    CAEP + "session-revoked", CAEP + "credential-change", RISC + "sessions-revoked", RISC + "account-disabled",
    RISC + "account-purged", RISC + "credential-compromise", RISC + "account-credential-change-required",
])
def test_account_and_session_events_cut_off_the_subject_at_the_event_time(event):
    assert recall_of(claims(event), START + 5) == Recall(event, subject="alice", before=START)
    timed = claims(event, payload={"event_timestamp": START - 30})
    assert recall_of(timed, START + 5).before == START - 30


@pytest.mark.parametrize("subject, name", [
    ({"format": "email", "email": "alice@example.com"}, "alice@example.com"),
    ({"format": "opaque", "id": "u-17"}, "u-17"),
    ({"format": "complex", "user": {"format": "iss_sub", "iss": IDP, "sub": "bob"}}, "bob"),
])
def test_every_subject_format_names_its_subject(subject, name):
    assert recall_of(claims(CAEP + "session-revoked", subject), START).subject == name


def test_a_jwt_id_subject_or_a_token_revoked_event_recalls_that_one_token():
    ref = {"format": "jwt_id", "iss": IDP, "jti": "tok-9"}
    assert recall_of(claims(CAEP + "session-revoked", ref), START).token == JtiRef(IDP, "tok-9")
    assert recall_of(claims(OAUTH + "token-revoked", ref), START).token == JtiRef(IDP, "tok-9")
    hashed = {"subject_type": "oauth_token", "token_type": "refresh_token",
              "token_identifier_alg": "hash_base64_sha512_sha512", "token": "abc"}
    unmatched = recall_of(claims(OAUTH + "token-revoked", None, {"subject": hashed}), START)
    assert unmatched.token is None and not unmatched.subject and "cannot be matched" in unmatched.why


def test_an_event_from_the_future_cuts_off_no_later_than_now():
    assert recall_of(claims(CAEP + "credential-change", payload={"event_timestamp": START + 900}), START).before == START


def test_unknown_events_ask_for_nothing_and_are_not_errors():
    verification = "https://schemas.openid.net/secevent/ssf/event-type/verification"
    recall = recall_of(claims(verification, None), START)
    assert recall.subject == "" and recall.token is None and recall.why


@pytest.mark.parametrize("bad, problem", [
    ({"iss": IDP, "jti": "x", "events": {}}, "exactly one event"),
    ({"iss": IDP, "jti": "x", "events": {CAEP + "a": {}, CAEP + "b": {}}}, "exactly one event"),
    (claims(CAEP + "session-revoked", None), "no subject"),
    (claims(CAEP + "session-revoked", {"format": "iss_sub", "iss": IDP}), "needs the string sub"),
    (claims(CAEP + "session-revoked", {"format": "jwt_id", "iss": IDP}), "iss and jti"),
])
def test_a_set_that_cannot_be_read_is_an_invalid_request(bad, problem):
    with pytest.raises(BadEvent, match=problem) as caught:
        recall_of(bad, START)
    assert caught.value.err == "invalid_request"


# ------------------------------------------------------------- applying


@pytest.fixture
def h(data_dir, stores):
    harness = make_harness(data_dir, FakeClock(START), stores, clock_skew=0)
    yield harness
    harness.shutdown()


FIELDS = {"transmitter": "okta-main", "issuer": IDP, "jti": "set-1", "event": CAEP + "session-revoked"}


def test_a_signal_cuts_off_once_and_its_replay_changes_nothing_even_after_a_restart(h):
    old, other = h.register(spec("alice", issued_at=START - 60), spec("bob", issued_at=START - 60)).tokens
    recall = Recall(CAEP + "session-revoked", subject="alice", before=START)
    first = h.run(h.engine.signal(IDP, "set-1", recall, FIELDS))
    assert (first.count, first.duplicate) == (1, False)
    assert h.state(old.serial) == TokenState.REVOKED and h.state(other.serial) == TokenState.ACTIVE
    seq = h.seq
    h.restart()
    again = h.run(h.engine.signal(IDP, "set-1", recall, FIELDS))
    assert again.duplicate and again.seq == first.seq and h.seq == seq
    h.register(spec("alice", issued_at=START - 30))  # issued before the event: the rule still holds
    assert h.state(h.through) == TokenState.REVOKED


def test_the_audit_trail_names_the_transmitter_the_set_and_its_event(h):
    h.register(spec("alice", issued_at=START - 60))
    h.run(h.engine.signal(IDP, "set-1", Recall(CAEP + "session-revoked", subject="alice", before=START), FIELDS))
    token_fields = {**FIELDS, "jti": "set-2", "event": OAUTH + "token-revoked"}
    h.run(h.engine.signal(IDP, "set-2", Recall(OAUTH + "token-revoked", token=JtiRef(IDP, "tok-9")), token_fields))
    records = h.run(h.engine.audit(AuditQuery()))
    cutoff, revoke = records[-2], records[-1]
    assert cutoff["kind"] == "cutoff" and cutoff["signal"] == FIELDS and cutoff["count"] == 1
    assert cutoff["rule"]["value"] == "alice" and "session-revoked signalled by okta-main" in cutoff["reason"]
    assert revoke["kind"] == "revoke" and revoke["signal"] == token_fields
    assert h.state(JtiRef(IDP, "tok-9")) == TokenState.REVOKED


def test_a_set_that_recalls_nothing_is_still_remembered_and_makes_no_change(h):
    seq = h.seq
    result = h.run(h.engine.signal(IDP, "set-7", Recall("urn:example:other", why="unknown"), FIELDS))
    assert (result.count, result.duplicate, h.seq) == (0, False, seq)
    assert h.run(h.engine.signal(IDP, "set-7", Recall("urn:example:other"), FIELDS)).duplicate
    # The same jti from another issuer is another SET.
    assert not h.run(h.engine.signal("https://other.example", "set-7", Recall("urn:example:other"), FIELDS)).duplicate


def test_a_revocation_by_subject_or_a_subject_cutoff_calls_for_a_session_revoked_set():
    from recallcore.core.signals import outgoing

    revoke = {"kind": "revoke", "seq": 9, "time": START, "reason": "leaked", "selector": {"subject": "alice"}}
    claims = outgoing(revoke, "https://recall.example", "https://rp.example", "store1")
    assert claims == {
        "iss": "https://recall.example", "aud": "https://rp.example", "iat": START, "jti": "store1-9",
        "sub_id": {"format": "opaque", "id": "alice"},
        "events": {CAEP + "session-revoked": {"event_timestamp": START, "initiating_entity": "admin",
                                               "reason_admin": {"en": "leaked"}}}}
    cutoff = {"kind": "cutoff", "seq": 10, "time": START, "reason": "", "signal": {"jti": "x"},
              "rule": {"scope": "subject", "value": "bob", "before": START - 5}}
    event = outgoing(cutoff, "i", "a", "s")["events"][CAEP + "session-revoked"]
    assert event == {"event_timestamp": START - 5, "initiating_entity": "policy"}
    for other in ({"kind": "revoke", "seq": 1, "time": START, "selector": {"serials": 3}},
                  {"kind": "cutoff", "seq": 2, "time": START, "rule": {"scope": "client", "value": "web", "before": 1}},
                  {"kind": "register", "seq": 3, "time": START}):
        assert outgoing(other, "i", "a", "s") is None



def test_a_cutoff_caused_by_a_credential_change_is_passed_on_as_one():
    from recallcore.core.signals import cause, outgoing

    kept = cause(CAEP + "credential-change", {"credential_type": "password", "change_type": "update", "x": 1})
    assert kept == {"credential_type": "password", "change_type": "update"}
    assert cause(CAEP + "session-revoked", {"credential_type": "password"}) == {}
    record = {"kind": "cutoff", "seq": 4, "time": START, "reason": "",
              "signal": {"event": CAEP + "credential-change", **kept},
              "rule": {"scope": "subject", "value": "bob", "before": START}}
    assert outgoing(record, "i", "a", "s")["events"] == {CAEP + "credential-change": {
        "event_timestamp": START, "initiating_entity": "policy", "credential_type": "password", "change_type": "update"}}
    record["signal"] = {"event": CAEP + "credential-change"}  # its types unknown: a session-revoked then
    assert list(outgoing(record, "i", "a", "s")["events"]) == [CAEP + "session-revoked"]



def test_the_sweeper_forgets_a_set_once_its_age_would_refuse_it_anyway(h):
    recall = Recall("urn:example:other")
    h.run(h.engine.signal(IDP, "old", recall, FIELDS, issued_at=START - 100))
    h.run(h.engine.signal(IDP, "new", recall, FIELDS, issued_at=START))
    h.clock.now = START + h.settings.ssf_max_age + h.settings.clock_skew - 50
    h.run(h.engine.sweep())
    assert h.run(h.engine.signal(IDP, "old", recall, FIELDS, issued_at=START - 100)).duplicate is False  # forgotten
    assert h.run(h.engine.signal(IDP, "new", recall, FIELDS, issued_at=START)).duplicate  # still within its age
