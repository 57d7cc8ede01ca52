"""The local audience API validates every payload, honours Idempotency-Key, misbehaves on request
and persists its audiences; exercised over real HTTP on loopback with http.client."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading

import pytest

from partner_pipeline.agreements import HASH_PROFILES
from partner_pipeline_dev.local_audience_api import HASH_PROFILES as API_HASH_PROFILES
from partner_pipeline_dev.local_audience_api import AudienceApi, Fault

TOKEN = "test-token"
PATH = "/audiences/aud_1/members"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


A, B, C = sha("a@example.com"), sha("b@example.com"), sha("+15550100")


def batch(members, operation="add", hash_profile="canonical", **extra) -> dict:
    return {"operation": operation, "hash_profile": hash_profile, "members": members, **extra}


def call(api, method="POST", path=PATH, body=None, *, key="key-1", token=TOKEN, content_type="application/json",
         timeout=5.0):
    """One request on a fresh connection; returns (status, JSON body, headers)."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        conn.close()


@pytest.fixture
def api():
    with AudienceApi(token=TOKEN, max_batch_size=100) as server:
        yield server


def test_hash_profiles_match_the_agreements():
    assert API_HASH_PROFILES == HASH_PROFILES


def test_add_remove_clear_round_trip(api):
    status, body, _ = call(api, body=batch([{"email_sha256": A}, {"phone_sha256": C}, {"email_sha256": B, "phone_sha256": C}]))
    assert (status, body) == (200, {"audience_id": "aud_1", "operation": "add", "received": 3, "size": 3})
    assert api.members("aud_1") == {(A, None), (None, C), (B, C)}

    status, body, _ = call(api, "GET", key=None)
    expected = sorted([{"email_sha256": A}, {"phone_sha256": C}, {"email_sha256": B, "phone_sha256": C}],
                      key=lambda m: (m.get("email_sha256", ""), m.get("phone_sha256", "")))
    assert (status, body) == (200, {"audience_id": "aud_1", "members": expected})

    status, body, _ = call(api, body=batch([{"email_sha256": A}], operation="remove"), key="key-2")
    assert (status, body) == (200, {"audience_id": "aud_1", "operation": "remove", "received": 1, "size": 2})
    assert api.members("aud_1") == {(None, C), (B, C)}

    status, body, _ = call(api, "DELETE", key="key-3")
    assert (status, body) == (200, {"audience_id": "aud_1", "size": 0})
    assert api.members("aud_1") == set()
    assert call(api, "GET", "/audiences/never_used/members", key=None)[:2] == (200, {"audience_id": "never_used", "members": []})
    assert api.applied_count == 3 and api.replayed == 0


@pytest.mark.parametrize("body, path, message", [
    (batch([{"email_sha256": A}, {"email_sha256": "zz" * 32}]), PATH, "members[1].email_sha256: not 64 lowercase hex characters"),
    (batch([{"phone_sha256": A.upper()}]), PATH, "members[0].phone_sha256: not 64 lowercase hex characters"),
    (batch([{"email_sha256": A[:63]}]), PATH, "members[0].email_sha256: not 64 lowercase hex characters"),
    (batch([{"email_sha256": None}]), PATH, "members[0].email_sha256: not 64 lowercase hex characters"),
    (batch([{"email_sha256": A, "email": "a@example.com"}]), PATH, "members[0]: unexpected key(s) email"),
    (batch([{"email_sha256": A}, {}]), PATH, "members[1]: needs email_sha256, phone_sha256 or partner_person_id"),
    (batch(["not an object"]), PATH, "members[0]: must be an object"),
    (batch([{"email_sha256": A}] * 101), PATH, "members: 101 members exceeds max_batch_size 100"),
    (batch([]), PATH, "members: must be a non-empty list"),
    (batch([{"email_sha256": A}], operation="upsert"), PATH, "operation: must be 'add' or 'remove', got 'upsert'"),
    (batch([{"email_sha256": A}], hash_profile="md5"), PATH,
     "hash_profile: must be one of canonical, uid2, basic, google, got 'md5'"),
    (batch([{"email_sha256": A}], ttl=30), PATH, "body: unexpected field(s) ttl"),
    (b"{not json", PATH, "body: not valid JSON"),
    (batch([{"email_sha256": A}]), "/audiences/Bad-Id/members", "audience_id: must match [a-z0-9_]{1,64}"),
    (batch([{"email_sha256": A}]), f"/audiences/{'a' * 65}/members", "audience_id: must match [a-z0-9_]{1,64}"),
])
def test_invalid_batches_are_rejected_naming_the_field(api, body, path, message):
    status, response, _ = call(api, path=path, body=body)
    assert (status, response) == (400, {"error": message})
    assert api.applied_count == 0 and api.members("aud_1") == set()


@pytest.mark.parametrize("kwargs, status, message", [
    ({"key": None}, 400, "Idempotency-Key: header required, 1 to 200 characters"),
    ({"key": "k" * 201}, 400, "Idempotency-Key: header required, 1 to 200 characters"),
    ({"content_type": "text/plain"}, 400, "Content-Type: must be application/json"),
    ({"token": None}, 401, "Authorization: missing or wrong bearer token"),
    ({"token": "wrong"}, 401, "Authorization: missing or wrong bearer token"),
])
def test_bad_headers_are_rejected(api, kwargs, status, message):
    assert call(api, body=batch([{"email_sha256": A}]), **kwargs)[:2] == (status, {"error": message})
    assert api.applied_count == 0 and api.members("aud_1") == set()


def test_get_and_delete_need_the_token_and_delete_needs_a_key(api):
    assert call(api, "GET", key=None, token="wrong")[0] == 401
    assert call(api, "DELETE", key=None)[:2] == (400, {"error": "Idempotency-Key: header required, 1 to 200 characters"})


def test_configured_hash_profile_is_enforced():
    with AudienceApi(token=TOKEN, hash_profile="uid2") as api:
        status, body, _ = call(api, body=batch([{"email_sha256": A}], hash_profile="canonical"))
        assert (status, body) == (400, {"error": "hash_profile: this audience API expects 'uid2', got 'canonical'"})
        assert call(api, body=batch([{"email_sha256": A}], hash_profile="uid2"))[0] == 200


def test_unknown_path_and_method(api):
    assert call(api, "GET", "/audiences", key=None)[0] == 404
    status, body, headers = call(api, "PUT", body=batch([{"email_sha256": A}]))
    assert status == 405 and "error" in body and headers["Allow"] == "GET, POST, DELETE"


def test_same_key_same_request_is_replayed_not_applied_twice(api):
    first = call(api, body=batch([{"email_sha256": A}]))
    call(api, "DELETE", key="clear")  # a replay must not re-apply the add after the audience changed
    second = call(api, body=batch([{"email_sha256": A}]))
    assert first[:2] == second[:2] == (200, {"audience_id": "aud_1", "operation": "add", "received": 1, "size": 1})
    assert second[2]["Idempotent-Replayed"] == "true"
    assert api.members("aud_1") == set()
    assert api.applied_count == 2 and api.replayed == 1
    assert [(r.method, r.status, r.applied) for r in api.requests] == [("POST", 200, True), ("DELETE", 200, True),
                                                                       ("POST", 200, False)]


def test_same_key_different_request_is_422(api):
    call(api, body=batch([{"email_sha256": A}]))
    status, body, _ = call(api, body=batch([{"email_sha256": B}]))
    assert (status, body) == (422, {"error": "Idempotency-Key reused with a different request"})
    assert call(api, "DELETE")[0] == 422  # same key, other method
    assert api.members("aud_1") == {(A, None)} and api.applied_count == 1


def test_concurrent_requests_with_one_key_apply_once(api):
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(call(api, body=batch([{"email_sha256": A}]))[0]))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    assert api.applied_count == 1 and api.replayed == 15


def test_status_faults_are_answered_in_order_and_not_applied(api):
    api.inject(Fault.status(429, retry_after="1"), Fault.status(500), Fault.status(400, body={"error": "scripted"}))
    assert call(api, "GET", key=None)[0] == 200  # GET does not consume a fault
    status, body, headers = call(api, body=batch([{"email_sha256": A}]))
    assert status == 429 and headers["Retry-After"] == "1" and "error" in body
    status, _, headers = call(api, body=batch([{"email_sha256": A}]))
    assert status == 500 and headers["Retry-After"] is None
    assert call(api, body=batch([{"email_sha256": A}]))[:2] == (400, {"error": "scripted"})
    assert api.members("aud_1") == set()
    assert call(api, body=batch([{"email_sha256": A}]))[0] == 200  # same key: a faulted request was never remembered
    assert api.members("aud_1") == {(A, None)} and api.applied_count == 1 and api.replayed == 0
    posts = [(r.status, r.applied, r.members, r.idempotency_key) for r in api.requests if r.method == "POST"]
    assert posts == [(429, False, 1, "key-1"), (500, False, 1, "key-1"), (400, False, 1, "key-1"), (200, True, 1, "key-1")]


def test_timeout_fault_outlasts_the_client_timeout(api):
    api.inject(Fault.timeout(5))
    with pytest.raises(TimeoutError):
        call(api, body=batch([{"email_sha256": A}]), timeout=0.3)
    assert api.members("aud_1") == set()
    assert [(r.status, r.applied) for r in api.requests] == [(504, False)]
    assert call(api, body=batch([{"email_sha256": A}]))[0] == 200
    assert api.members("aud_1") == {(A, None)} and api.applied_count == 1


def test_drop_closes_the_connection_without_applying(api):
    api.inject(Fault.drop())
    with pytest.raises(ConnectionError):
        call(api, body=batch([{"email_sha256": A}]))
    assert api.members("aud_1") == set() and api.requests[-1].status is None
    assert call(api, body=batch([{"email_sha256": A}]))[0] == 200
    assert api.applied_count == 1


def test_lost_response_is_replayed_on_retry_with_the_same_key(api):
    api.inject(Fault.drop_after_apply())
    with pytest.raises(ConnectionError):
        call(api, body=batch([{"email_sha256": A}, {"email_sha256": B}]))
    assert api.members("aud_1") == {(A, None), (B, None)}
    status, body, headers = call(api, body=batch([{"email_sha256": A}, {"email_sha256": B}]))
    assert (status, body) == (200, {"audience_id": "aud_1", "operation": "add", "received": 2, "size": 2})
    assert headers["Idempotent-Replayed"] == "true"
    assert api.applied_count == 1 and api.replayed == 1
    assert [(r.status, r.applied) for r in api.requests] == [(None, True), (200, False)]


def test_state_file_persists_audiences_across_restarts(tmp_path):
    state = tmp_path / "state" / "audiences.json"
    with AudienceApi(token=TOKEN, state_file=state) as api:
        call(api, body=batch([{"email_sha256": A}, {"email_sha256": B, "phone_sha256": C}]))
        call(api, "POST", "/audiences/other/members", batch([{"phone_sha256": C}]), key="key-2")
    assert set(json.loads(state.read_text())["audiences"]) == {"aud_1", "other"}
    with AudienceApi(token=TOKEN, state_file=state) as api:
        assert api.members("aud_1") == {(A, None), (B, C)} and api.members("other") == {(None, C)}
        call(api, body=batch([{"email_sha256": A}], operation="remove"), key="key-3")
    with AudienceApi(token=TOKEN, state_file=state) as api:
        assert call(api, "GET", key=None)[1]["members"] == [{"email_sha256": B, "phone_sha256": C}]
    assert [p.name for p in state.parent.iterdir()] == ["audiences.json"]  # no temp files left behind


def test_stop_closes_idle_keep_alive_connections():
    with AudienceApi(token=TOKEN) as api:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        conn.request("GET", PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        assert conn.getresponse().read()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        conn.getresponse()
    conn.close()


def test_requests_are_logged_without_member_hashes(api, caplog):
    with caplog.at_level(logging.INFO, logger="partner_pipeline_dev.local_audience_api"):
        call(api, body=batch([{"email_sha256": A, "phone_sha256": C}]))
        call(api, body=batch([{"email_sha256": "X" * 64}]), key="key-2")
    assert f"POST {PATH} -> 200" in caplog.text and f"POST {PATH} -> 400" in caplog.text
    assert A not in caplog.text and C not in caplog.text
