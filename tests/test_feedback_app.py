"""The REST API: authentication on every endpoint, roles, and bad input answered with a clear 4xx."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from feedback_fixtures import tiny_items

from feedback import schema
from feedback.app import create_app
from feedback.store import Store, utcnow

HUGE = 2**70  # past every integer column (PostgreSQL INTEGER and BIGINT)
PUBLIC = {("POST", "/api/login"), ("GET", "/health")}


@pytest.fixture
def app_store(db_url: str) -> Iterator[tuple[TestClient, Store, dict[str, str]]]:
    """The app over a store on SQLite, then on PostgreSQL (bad input must be refused alike on both)."""
    store = Store.create(db_url)
    store.import_items(tiny_items(3))
    tokens = {
        "admin": store.add_annotator("root", "admin", password="admin-password"),
        "ann": store.add_annotator("ann"),
        "other": store.add_annotator("other"),
    }
    with TestClient(create_app(store, max_body_bytes=4096)) as client:
        yield client, store, tokens
    store.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def snapshot(store: Store) -> Any:
    return store.records(), store.submission_ids(), store.annotators(), store.settings(), store.progress()


def answer_for(item: dict[str, Any], client_id: str = "client-id-0001") -> dict[str, Any]:
    return {
        "client_id": client_id,
        "prompt_id": item["prompt_id"],
        "ranking": [{"candidate_id": c["id"], "rank": i + 1} for i, c in enumerate(item["candidates"])],
    }


def test_openapi_describes_the_api_and_every_endpoint_but_two_needs_a_token(app_store) -> None:
    client, _, _ = app_store
    spec = client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert {("POST", "/api/answers"), ("GET", "/api/items/next"), ("GET", "/api/admin/export")} <= operations
    for method, path in sorted(operations - PUBLIC):
        response = client.request(method, path.replace("{prompt_id}", "1").replace("{answer_id}", "x"), json={})
        assert response.status_code == 401, (method, path, response.text)
        assert "Bearer" in response.json()["detail"] and response.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/health").json()["status"] == "ok"


def test_an_annotator_works_through_the_queue_and_a_retry_is_recorded_once(app_store) -> None:
    client, store, tokens = app_store
    login = client.post("/api/login", json={"name": "root", "password": "admin-password"})
    assert login.status_code == 200 and login.json()["annotator"]["role"] == "admin"
    headers = auth(tokens["ann"])
    item = client.get("/api/items/next", headers=headers).json()["item"]
    assert {"prompt_id", "messages", "candidates", "mode"} <= set(item) and "model" not in str(item["candidates"])
    first = client.post("/api/answers", json=answer_for(item), headers=headers)
    retry = client.post("/api/answers", json=answer_for(item), headers=headers)
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (retry.status_code, retry.json()["created"]) == (200, False)
    assert store.submission_ids() == ["client-id-0001"]
    mine = client.get("/api/answers", headers=headers).json()
    assert [a["id"] for a in mine] == ["client-id-0001"] and len(mine[0]["ranking"]) == len(item["candidates"])
    edit = {"thumbs": [{"candidate_id": item["candidates"][0]["id"], "up": True}], "comment": "ok"}
    assert client.put("/api/answers/client-id-0001", json=edit, headers=headers).json()["revision"] == 2
    revisit = client.get(f"/api/items/{item['prompt_id']}", headers=headers).json()
    assert revisit["answer"]["comment"] == "ok"
    progress = client.get("/api/me", headers=headers).json()["progress"]
    assert progress == {"answered": 1, "remaining": 2}


def test_an_edit_based_on_a_stale_revision_is_a_conflict(app_store) -> None:
    client, store, tokens = app_store
    headers = auth(tokens["ann"])
    item = client.get("/api/items/next", headers=headers).json()["item"]
    client.post("/api/answers", json=answer_for(item), headers=headers)
    first_id = item["candidates"][0]["id"]
    # Two tabs loaded revision 1; the first edit wins, the second must not overwrite it.
    tab_a = {"thumbs": [{"candidate_id": first_id, "up": True}], "revision": 1}
    tab_b = {"thumbs": [{"candidate_id": first_id, "up": False}], "revision": 1}
    assert client.put("/api/answers/client-id-0001", json=tab_a, headers=headers).json()["revision"] == 2
    stale = client.put("/api/answers/client-id-0001", json=tab_b, headers=headers)
    assert stale.status_code == 409 and "revision 1, it is now at revision 2" in stale.json()["detail"]
    assert store.answer(store.annotator("ann").id, "client-id-0001").thumbs == {first_id: True}


def test_a_late_answer_after_the_item_was_completed_by_others_is_a_409(app_store) -> None:
    client, store, tokens = app_store
    late, other = auth(tokens["ann"]), auth(tokens["other"])
    client.put("/api/admin/settings", json={"lease_minutes": 1}, headers=auth(tokens["admin"]))
    item = client.get("/api/items/next", headers=late).json()["item"]
    with store.engine.begin() as connection:  # the late annotator's lease ran out
        connection.execute(sa.update(schema.assignments).values(assigned_at=utcnow() - dt.timedelta(minutes=5)))
    taken = client.get("/api/items/next", headers=other).json()["item"]
    assert taken["prompt_id"] == item["prompt_id"]
    assert client.post("/api/answers", json=answer_for(taken, "other-answer-1"), headers=other).status_code == 201
    before = snapshot(store)
    response = client.post("/api/answers", json=answer_for(item, "late-answer-01"), headers=late)
    assert response.status_code == 409, response.text
    assert "expired" in response.json()["detail"] and "not recorded" in response.json()["detail"]
    assert snapshot(store) == before


def test_a_constraint_violation_is_a_409_not_a_500(app_store, monkeypatch) -> None:
    client, store, tokens = app_store

    def collide(*args, **kwargs):
        raise sa.exc.IntegrityError("INSERT ...", {}, Exception("duplicate key value violates unique constraint"))

    monkeypatch.setattr(store, "skip", collide)
    response = client.post("/api/items/1/skip", headers=auth(tokens["ann"]))
    assert response.status_code == 409 and "conflicts with data stored meanwhile" in response.json()["detail"]


def test_admin_endpoints(app_store, tmp_path) -> None:
    client, _, tokens = app_store
    headers = auth(tokens["admin"])
    assert client.put("/api/admin/settings", json={"overlap": 2, "mode": "thumbs"}, headers=headers).status_code == 200
    created = client.post("/api/admin/annotators", json={"name": "new", "password": "long-enough"}, headers=headers)
    assert created.status_code == 201 and created.json()["token"].startswith("rlhf_")
    imported = client.post(
        "/api/admin/import",
        json={"rows": [{"prompt": "What is 1 plus 1?", "candidates": ["2.", "3."]}]},
        headers=headers,
    )
    assert imported.json()["prompts_added"] == 1 and imported.json()["candidates_added"] == 2
    assert client.get("/api/admin/progress", headers=headers).json()["items"] == 4
    assert [q["question"] for q in client.get("/api/admin/agreement", headers=headers).json()] == ["thumbs", "ranking"]
    guide = client.get("/api/guidelines", headers=headers).json()
    assert "<strong>" in guide["html"]
    client.put("/api/admin/settings", json={"guidelines": "**x** <script>alert(1)</script>"}, headers=headers)
    html = client.get("/api/guidelines", headers=headers).json()["html"]
    assert "<script>" not in html and "&lt;script&gt;" in html


def _bad_requests(tokens: dict[str, str], item: dict[str, Any], own_answer: str) -> list[tuple]:
    ann, other, admin = auth(tokens["ann"]), auth(tokens["other"]), auth(tokens["admin"])
    json_headers = {**ann, "Content-Type": "application/json"}
    good = answer_for(item, "client-id-0002")
    edit = {"ranking": [{**r, "rank": 1} for r in good["ranking"]]}  # a tie: differs from the answer
    return [
        # (name, method, path, kwargs, status, words in the message)
        (
            "malformed JSON",
            "POST",
            "/api/answers",
            {"content": b'{"client_id": ', "headers": json_headers},
            400,
            "not valid JSON",
        ),
        (
            "not an object",
            "POST",
            "/api/answers",
            {"content": b"[1, 2]", "headers": json_headers},
            422,
            "invalid request",
        ),
        (
            "oversized body",
            "POST",
            "/api/answers",
            {"content": b"{" + b" " * 5000 + b"}", "headers": json_headers},
            413,
            "over 4096 bytes",
        ),
        ("unknown field", "POST", "/api/answers", {"json": {**good, "score": 5}, "headers": ann}, 422, "score"),
        (
            "missing field",
            "POST",
            "/api/answers",
            {"json": {"client_id": "abcdefgh"}, "headers": ann},
            422,
            "prompt_id",
        ),
        (
            "rank out of range",
            "POST",
            "/api/answers",
            {"json": {**good, "ranking": [{"candidate_id": 1, "rank": 0}]}, "headers": ann},
            422,
            "rank",
        ),
        (
            "partial ranking",
            "POST",
            "/api/answers",
            {"json": {**good, "ranking": good["ranking"][:1]}, "headers": ann},
            422,
            "every response must be ranked",
        ),
        (
            "duplicate candidate",
            "POST",
            "/api/answers",
            {"json": {**good, "ranking": good["ranking"][:1] * 2}, "headers": ann},
            422,
            "more than once",
        ),
        (
            "unknown prompt",
            "POST",
            "/api/answers",
            {"json": {**good, "prompt_id": 999}, "headers": ann},
            404,
            "no prompt 999",
        ),
        (
            "unknown candidate",
            "POST",
            "/api/answers",
            {"json": {**good, "thumbs": [{"candidate_id": 999, "up": True}]}, "headers": ann},
            422,
            "not responses",
        ),
        (
            "bad client id",
            "POST",
            "/api/answers",
            {"json": {**good, "client_id": "<script>"}, "headers": ann},
            422,
            "client_id",
        ),
        (
            "another annotator's item",
            "POST",
            "/api/answers",
            {"json": good, "headers": other},
            403,
            "not handed to you",
        ),
        ("another annotator's answer", "GET", f"/api/answers/{own_answer}", {"headers": other}, 404, "no answer"),
        (
            "edit another's answer",
            "PUT",
            f"/api/answers/{own_answer}",
            {"json": {"thumbs": []}, "headers": other},
            404,
            "no answer",
        ),
        (
            "another annotator's item view",
            "GET",
            f"/api/items/{item['prompt_id']}",
            {"headers": other},
            404,
            "not among your items",
        ),
        ("unknown item", "POST", "/api/items/999/skip", {"headers": ann}, 404, "no prompt 999"),
        (
            "answered twice",
            "POST",
            "/api/answers",
            {"json": {**good, "client_id": "client-id-0003"}, "headers": ann},
            409,
            "already answered",
        ),
        (
            "client id reused",
            "POST",
            "/api/answers",
            {"json": {**answer_for(item, own_answer), "comment": "different"}, "headers": ann},
            409,
            "different answer",
        ),
        ("missing auth", "GET", "/api/items/next", {}, 401, "Bearer"),
        ("bad token", "GET", "/api/items/next", {"headers": auth("rlhf_forged")}, 401, "unknown or expired"),
        ("bad scheme", "GET", "/api/items/next", {"headers": {"Authorization": "Basic abc"}}, 401, "Bearer"),
        ("wrong role", "GET", "/api/admin/progress", {"headers": ann}, 403, "admin role"),
        ("wrong role import", "POST", "/api/admin/import", {"json": {"rows": []}, "headers": ann}, 403, "admin role"),
        (
            "bad login",
            "POST",
            "/api/login",
            {"json": {"name": "root", "password": "nope"}},
            401,
            "wrong name or password",
        ),
        ("empty login", "POST", "/api/login", {"json": {}}, 422, "name and password"),
        (
            "bad import row",
            "POST",
            "/api/admin/import",
            {"json": {"rows": [{"prompt": ""}]}, "headers": admin},
            422,
            "'prompt': empty",
        ),
        (
            "bad import candidate",
            "POST",
            "/api/admin/import",
            {"json": {"rows": [{"prompt": "q", "candidates": [7]}]}, "headers": admin},
            422,
            "'candidates'[0]",
        ),
        ("bad setting", "PUT", "/api/admin/settings", {"json": {"overlap": 0}, "headers": admin}, 422, "overlap"),
        (
            "duplicate annotator",
            "POST",
            "/api/admin/annotators",
            {"json": {"name": "ann"}, "headers": admin},
            409,
            "exists already",
        ),
        ("bad export format", "GET", "/api/admin/export?format=csv", {"headers": admin}, 422, "format"),
        ("bad page size", "GET", "/api/answers?limit=100000", {"headers": ann}, 422, "limit"),
        # Values PostgreSQL cannot hold (INTEGER ids, text without NUL): refused before the database.
        (
            "huge prompt id",
            "POST",
            "/api/answers",
            {"json": {**good, "prompt_id": HUGE}, "headers": ann},
            422,
            "prompt_id",
        ),
        (
            "huge candidate id",
            "POST",
            "/api/answers",
            {"json": {**good, "ranking": [{"candidate_id": HUGE, "rank": 1}]}, "headers": ann},
            422,
            "candidate_id",
        ),
        (
            "huge rank",
            "POST",
            "/api/answers",
            {"json": {**good, "ranking": [{"candidate_id": 1, "rank": HUGE}]}, "headers": ann},
            422,
            "rank",
        ),
        (
            "huge corrected candidate",
            "PUT",
            f"/api/answers/{own_answer}",
            {"json": {"correction": "Better.", "corrected_candidate_id": HUGE}, "headers": ann},
            422,
            "corrected_candidate_id",
        ),
        ("huge item id", "GET", f"/api/items/{HUGE}", {"headers": ann}, 422, "prompt_id"),
        ("huge skip id", "POST", f"/api/items/{HUGE}/skip", {"headers": ann}, 422, "prompt_id"),
        ("huge offset", "GET", f"/api/answers?offset={HUGE}", {"headers": ann}, 422, "offset"),
        (
            "huge revision",
            "PUT",
            f"/api/answers/{own_answer}",
            {"json": {**edit, "revision": HUGE}, "headers": ann},
            422,
            "revision",
        ),
        (
            "NUL in comment",
            "POST",
            "/api/answers",
            {"json": {**good, "comment": "a\u0000b"}, "headers": ann},
            422,
            "NUL",
        ),
        (
            "NUL in correction",
            "PUT",
            f"/api/answers/{own_answer}",
            {"json": {"correction": "a\u0000b"}, "headers": ann},
            422,
            "NUL",
        ),
        ("NUL in answer id", "GET", "/api/answers/abc%00def", {"headers": ann}, 422, "answer_id"),
        ("NUL in login name", "POST", "/api/login", {"json": {"name": "ann\u0000", "password": "x" * 8}}, 422, "NUL"),
        (
            "NUL in new annotator",
            "POST",
            "/api/admin/annotators",
            {"json": {"name": "a\u0000"}, "headers": admin},
            422,
            "NUL",
        ),
        (
            "NUL in guidelines",
            "PUT",
            "/api/admin/settings",
            {"json": {"guidelines": "\u0000"}, "headers": admin},
            422,
            "NUL",
        ),
        (
            "NUL in import",
            "POST",
            "/api/admin/import",
            {"json": {"rows": [{"prompt": "q", "candidates": ["a\u0000"]}]}, "headers": admin},
            422,
            "'candidates'[0]: contains a NUL",
        ),
        (
            "long import id",
            "POST",
            "/api/admin/import",
            {"json": {"rows": [{"id": "x" * 300, "prompt": "q"}]}, "headers": admin},
            422,
            "'id': 300 characters",
        ),
        (
            "reused import id",
            "POST",
            "/api/admin/import",
            {"json": {"rows": [{"id": "q0", "prompt": "Another prompt entirely?"}]}, "headers": admin},
            409,
            "already used",
        ),
        (
            "stale revision",
            "PUT",
            f"/api/answers/{own_answer}",
            {"json": {**edit, "revision": 7}, "headers": ann},
            409,
            "changed meanwhile",
        ),
    ]


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(app_store) -> None:
    client, store, tokens = app_store
    ann = auth(tokens["ann"])
    item = client.get("/api/items/next", headers=ann).json()["item"]
    own = client.post("/api/answers", json=answer_for(item), headers=ann).json()["id"]
    client.get("/api/items/next", headers=ann)  # the next item is now held by ann
    before = snapshot(store)
    for name, method, path, kwargs, status, words in _bad_requests(tokens, item, own):
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert words in response.json()["detail"], (name, response.json())
        assert snapshot(store) == before, name


def test_pages_are_served_with_a_strict_content_security_policy(app_store) -> None:
    client, _, _ = app_store
    for path in ("/", "/admin", "/static/app.js"):
        response = client.get(path)
        assert response.status_code == 200
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = client.get("/").text
    assert "<script>" not in page.replace('<script src="/static/common.js" defer></script>', "").replace(
        '<script src="/static/app.js" defer></script>', ""
    )  # no inline script: the CSP would block it
