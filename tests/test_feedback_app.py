"""The REST API: authentication on every endpoint, roles, and bad input answered with a clear 4xx."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from feedback_fixtures import auth

from feedback import schema
from feedback.app import create_app
from feedback.store import LoginLimits, Store, Unauthorized, accounts, utcnow

HUGE = 2**70  # past every integer column (PostgreSQL INTEGER and BIGINT)
PUBLIC = {("POST", "/api/login"), ("GET", "/health")}


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
    refused = client.put("/api/answers/client-id-0001", json=edit, headers=headers)  # ranking mode: ranks needed
    assert refused.status_code == 422 and "ranking mode" in refused.json()["detail"]
    edit["ranking"] = answer_for(item)["ranking"]
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
    ties = [{"candidate_id": c["id"], "rank": 1} for c in item["candidates"]]  # the mode asks for a ranking
    tab_a = {"ranking": ties, "thumbs": [{"candidate_id": first_id, "up": True}], "revision": 1}
    tab_b = {"ranking": ties, "thumbs": [{"candidate_id": first_id, "up": False}], "revision": 1}
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
            403,  # the same answer as for an item that exists but is not yours: nothing about it leaks
            "prompt 999 was not handed to you",
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
        ("skip an unknown item", "POST", "/api/items/999/skip", {"headers": ann}, 403, "was not handed to you"),
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


# ----------------------------------------------------------------------------------------------
# Hardening: unencodable text, mode and completeness, headers, sessions, login throttling


def _raw_json(method: str, path: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """Request kwargs whose body holds ``\\ud800`` escapes (json.dumps writes lone surrogates as escapes)."""
    return {
        "method": method,
        "url": path,
        "content": json.dumps(body).encode(),
        "headers": {**headers, "Content-Type": "application/json"},
    }


def test_unencodable_text_is_a_422_in_every_body_and_stores_nothing(app_store) -> None:
    client, store, tokens = app_store
    ann, admin = auth(tokens["ann"]), auth(tokens["admin"])
    item = client.get("/api/items/next", headers=ann).json()["item"]
    own = client.post("/api/answers", json=answer_for(item), headers=ann).json()["id"]
    bad = "bad \ud800 text"
    requests = [
        ("POST", "/api/login", {"name": bad, "password": "admin-password"}, {}, "name"),
        ("POST", "/api/login", {"name": "root", "password": bad}, {}, "password"),
        ("POST", "/api/login", {"token": bad}, {}, "token"),
        ("POST", "/api/answers", {**answer_for(item, "client-id-0009"), "comment": bad}, ann, "comment"),
        ("POST", "/api/answers", {**answer_for(item, "client-id-0009"), "correction": bad}, ann, "correction"),
        ("POST", "/api/answers", {**answer_for(item, "client-\ud800-9"), "comment": "fine"}, ann, "client_id"),
        ("PUT", f"/api/answers/{own}", {"ranking": answer_for(item)["ranking"], "comment": bad}, ann, "comment"),
        ("PUT", "/api/admin/settings", {"guidelines": bad}, admin, "guidelines"),
        ("POST", "/api/admin/annotators", {"name": bad}, admin, "name"),
        ("POST", "/api/admin/annotators", {"name": "newbie", "password": bad}, admin, "password"),
        ("POST", "/api/admin/import", {"rows": [{"prompt": "q", "candidates": [bad]}]}, admin, "'candidates'[0]"),
        ("POST", "/api/admin/import", {"rows": [{"prompt": bad}]}, admin, "'prompt'"),
    ]
    before = snapshot(store)
    for method, path, body, headers, field in requests:
        response = client.request(**_raw_json(method, path, body, headers))
        assert response.status_code == 422, (path, field, response.text)
        detail = response.json()["detail"]
        # the client_id pattern refuses it first, in pydantic's words ("unable to parse ... as a unicode string")
        assert field in detail and ("U+D800" in detail or "unicode string" in detail), (path, detail)
        assert snapshot(store) == before, (path, field)


def test_rows_stored_with_unencodable_text_are_served_escaped_and_reported(app_store, caplog) -> None:
    client, store, tokens = app_store
    with store.engine.begin() as connection:  # as stored before the checks: JSON columns kept the escapes
        connection.execute(sa.insert(schema.settings).values(key="guidelines", value="Be kind \ud800"))
        connection.execute(
            sa.update(schema.prompts)
            .where(schema.prompts.c.id == 1)
            .values(messages=[{"role": "user", "content": "What \udfff?"}])
        )
    assert [(p.table, p.row, p.column) for p in store.encoding_problems()] == [
        ("prompts", "1", "messages"),
        ("settings", "guidelines", "value"),
    ]
    ann, admin = auth(tokens["ann"]), auth(tokens["admin"])
    caplog.set_level("WARNING", logger="feedback.store.common")
    assert client.get("/api/guidelines", headers=ann).json()["markdown"] == "Be kind \\ud800"
    assert client.get("/api/admin/settings", headers=admin).json()["guidelines"] == "Be kind \\ud800"
    item = client.get("/api/items/next", headers=ann).json()["item"]
    assert item["messages"] == [{"role": "user", "content": "What \\udfff?"}]
    assert client.post("/api/answers", json=answer_for(item), headers=ann).status_code == 201
    export = client.get("/api/admin/export", params={"format": "pairs", "test_fraction": 0.0}, headers=admin)
    assert export.status_code == 200 and export.headers["Cache-Control"] == "no-store"
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        assert "What \\\\udfff?" in archive.read("train.jsonl").decode()
    assert "served escaped" in caplog.text and "U+DFFF" in caplog.text


def test_the_api_holds_answers_to_the_mode_and_says_nothing_about_items_not_held(app_store) -> None:
    client, store, tokens = app_store
    ann = auth(tokens["ann"])
    item = client.get("/api/items/next", headers=ann).json()["item"]
    ids = [c["id"] for c in item["candidates"]]
    ranking = answer_for(item, "client-id-0100")
    thumbs = [{"candidate_id": c, "up": i == 0} for i, c in enumerate(ids)]
    contradicting = [{"candidate_id": c, "up": i != 0} for i, c in enumerate(ids)]  # the best is thumbs down
    other = store.records()[1]  # an item not handed to ann
    other_ids = [c.id for c in other.candidates]
    refused = [
        ({"client_id": "client-id-0100", "prompt_id": item["prompt_id"], "thumbs": thumbs}, 422, "ranking mode"),
        ({**ranking, "ranking": ranking["ranking"][:-1]}, 422, "every response must be ranked"),
        ({**ranking, "thumbs": contradicting}, 422, "thumbs contradict the ranking"),
        ({**ranking, "prompt_id": True}, 422, "prompt_id"),
        ({**ranking, "ranking": [{**r, "rank": True} for r in ranking["ranking"]]}, 422, "rank"),
        ({**ranking, "thumbs": [{"candidate_id": ids[0], "up": 1}]}, 422, "up"),
        (
            {"client_id": "client-id-0101", "prompt_id": other.prompt_id, "ranking": [{"candidate_id": 1, "rank": 1}]},
            403,
            "was not handed to you",
        ),
        ({"client_id": "client-id-0102", "prompt_id": 999, "thumbs": []}, 403, "was not handed to you"),
    ]
    before = snapshot(store)
    for body, status, words in refused:
        response = client.post("/api/answers", json=body, headers=ann)
        assert response.status_code == status and words in response.json()["detail"], (body, response.text)
        if status == 403:
            assert not any(str(c) in response.json()["detail"].replace(str(other.prompt_id), "") for c in other_ids)
        assert snapshot(store) == before
    # Skipping says as little: an item that exists but was never handed to you, and one that does not exist.
    not_yours = client.post(f"/api/items/{other.prompt_id}/skip", headers=ann)
    missing = client.post("/api/items/999/skip", headers=ann)
    assert (not_yours.status_code, missing.status_code) == (403, 403)
    assert not_yours.json()["detail"].replace(str(other.prompt_id), "N") == missing.json()["detail"].replace("999", "N")
    assert snapshot(store) == before
    assert client.post("/api/answers", json={**ranking, "thumbs": thumbs}, headers=ann).status_code == 201
    admin = auth(tokens["admin"])
    for bad in ({"overlap": True}, {"lease_minutes": True}, {"overlap": "2"}):
        assert client.put("/api/admin/settings", json=bad, headers=admin).status_code == 422, bad
    store.update_settings(mode="thumbs")
    follow = client.get("/api/items/next", headers=ann).json()["item"]
    partial = {"client_id": "client-id-0200", "prompt_id": follow["prompt_id"], "thumbs": thumbs[:0]}
    partial["thumbs"] = [{"candidate_id": follow["candidates"][0]["id"], "up": True}]
    response = client.post("/api/answers", json=partial, headers=ann)
    assert response.status_code == 422 and "thumbs mode: give every response a thumb" in response.json()["detail"]
    partial["thumbs"] = [{"candidate_id": c["id"], "up": True} for c in follow["candidates"]]
    assert client.post("/api/answers", json=partial, headers=ann).status_code == 201


def test_tokens_personal_data_and_exports_are_not_cached_and_every_response_is_secured(app_store) -> None:
    client, _, tokens = app_store
    admin = auth(tokens["admin"])
    responses = [
        client.post("/api/login", json={"name": "root", "password": "admin-password"}),
        client.get("/api/me", headers=admin),
        client.get("/api/admin/annotators", headers=admin),
        client.get("/api/admin/export", params={"format": "pairs"}, headers=admin),
        client.post("/api/answers", content=b"{" + b" " * 5000 + b"}", headers=admin),  # the early 413
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 413]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.url
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in client.get("/").headers.get("Cache-Control", "")


def test_sessions_end_when_credentials_change_and_logout_refuses_an_api_token(app_store) -> None:
    client, store, tokens = app_store

    def session() -> dict[str, str]:
        return auth(client.post("/api/login", json={"name": "root", "password": "admin-password"}).json()["token"])

    for change in (
        lambda: store.set_password("root", "admin-password"),
        lambda: store.new_token("root", revoke_old=False),
        lambda: (store.set_active("root", False), store.set_active("root", True)),
    ):
        opened = session()
        assert client.get("/api/me", headers=opened).status_code == 200
        change()
        assert client.get("/api/me", headers=opened).status_code == 401
    api = auth(tokens["ann"])
    response = client.post("/api/logout", headers=api)
    assert response.status_code == 422 and "API token" in response.json()["detail"]
    assert client.get("/api/me", headers=api).status_code == 200  # the refusal did not pretend
    opened = session()
    assert client.post("/api/logout", headers=opened).status_code == 200
    assert client.get("/api/me", headers=opened).status_code == 401


def test_failed_logins_lock_the_name_from_that_address_then_an_address_or_a_name_past_a_ceiling(db_url: str) -> None:
    store = Store.create(db_url)
    store.add_annotator("root", "admin", password="admin-password")
    store.add_annotator("ann", password="ann-password")
    now = [1000.0]
    limits = LoginLimits(per_pair=3, per_address=5, per_name=4, window_s=60, clock=lambda: now[0])
    app = create_app(store, login_limits=limits)

    def login(address: str, name: str, password: str = "wrong-password") -> Any:
        return TestClient(app, client=(address, 5000)).post("/api/login", json={"name": name, "password": password})

    # The name from that address: three failures, then even the right password waits.
    assert [login("10.0.0.1", name).status_code for name in ("root", "ROOT", "ｒｏｏｔ")] == [401, 401, 401]
    refused = login("10.0.0.1", "Root", "admin-password")  # one name, however it is written
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert "too many failed logins" in refused.json()["detail"]
    # ... and nothing else: another account's login from that address, and root's from another address.
    assert login("10.0.0.1", "ann", "ann-password").status_code == 200
    assert login("10.0.0.2", "root", "admin-password").status_code == 200
    now[0] += 30
    assert login("10.0.0.1", "root", "admin-password").headers["Retry-After"] == "30"
    # An address trying many names meets its ceiling (5), for every name, unknown ones counted alike.
    assert [login("10.0.0.3", f"nobody-{i}").status_code for i in range(5)] == [401] * 5
    assert login("10.0.0.3", "ann", "ann-password").status_code == 429
    # One name guessed from many addresses meets the name's ceiling (4), from any address.
    assert [login(f"10.0.1.{i}", "ann").status_code for i in range(4)] == [401] * 4
    assert login("10.0.2.1", "ann", "ann-password").status_code == 429
    now[0] += 61  # every failure has left the window
    assert login("10.0.2.1", "ann", "ann-password").status_code == 200
    assert login("10.0.0.1", "root", "admin-password").status_code == 200
    store.close()


def test_concurrent_wrong_logins_get_at_most_the_limit_of_401s(db_url: str, monkeypatch) -> None:
    """The attempt is counted before the password is checked: 20 guesses sent at once are 5 guesses, not 20."""
    store = Store.create(db_url)
    store.add_annotator("root", "admin", password="admin-password")
    verify = accounts.verify_password
    checking, refused, changed = [0], [0], threading.Condition()

    def slow_verify(password: str, stored: str) -> bool:
        """Hold every check until each guess is either in its own check or refused: the widest race there is."""
        with changed:
            checking[0] += 1
            changed.notify_all()
            changed.wait_for(lambda: checking[0] + refused[0] >= 20, timeout=10)
        return verify(password, stored)

    monkeypatch.setattr(accounts, "verify_password", slow_verify)
    app = create_app(store, login_limits=LoginLimits(per_pair=5, per_address=100, per_name=100))
    start = threading.Barrier(20)

    def guess(i: int) -> int:
        client = TestClient(app, client=("10.0.0.1", 5000))
        start.wait()
        code = client.post("/api/login", json={"name": "root", "password": f"guess-{i:04d}"}).status_code
        with changed:
            refused[0] += code == 429
            changed.notify_all()
        return code

    with ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(guess, range(20)))
    assert codes == [401] * 5 + [429] * 15, codes
    store.close()


def test_password_hashing_runs_within_its_memory_budget_and_unknown_names_cost_a_hash_too(
    store: Store, monkeypatch
) -> None:
    """16 logins at once (half of them for unknown names) hash two at a time with a budget of two hashes."""
    store.add_annotator("root", "admin", password="admin-password")
    in_flight, most, lock = [0], [0], threading.Lock()
    scrypt = hashlib.scrypt

    def counted(*args: Any, **kwargs: Any) -> bytes:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        try:
            return scrypt(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(hashlib, "scrypt", counted)
    monkeypatch.setattr(accounts, "HASHING", accounts.MemoryBudget(2 * accounts.COST.memory))
    start = threading.Barrier(16)

    def login(i: int) -> str:
        start.wait()
        try:
            store.login("root" if i % 2 else f"nobody-{i}", "admin-password" if i % 4 == 1 else "wrong-password")
        except Unauthorized:
            return "401"
        return "200"

    with ThreadPoolExecutor(16) as pool:
        results = sorted(pool.map(login, range(16)))
    assert results == ["200"] * 4 + ["401"] * 12
    assert most[0] == 2 and accounts.HASHING.peak == 2 * accounts.COST.memory  # bounded, and the bound is used


def test_forwarded_addresses_are_believed_only_from_the_proxies_the_operator_names(db_url: str) -> None:
    store = Store.create(db_url)
    limits = LoginLimits(per_pair=1, per_address=2, per_name=10)

    def codes(trusted: list[str], peer: str) -> list[int]:
        client = TestClient(create_app(store, login_limits=limits, trusted_proxies=trusted), client=(peer, 5000))
        return [
            client.post(
                "/api/login",
                json={"name": f"nobody-{peer}-{i}", "password": "wrong-password"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            ).status_code
            for i in range(3)
        ]

    assert codes([], "127.0.0.1") == [401, 401, 429]  # by default a local process cannot pose as others
    assert codes(["10.0.0.0/8"], "127.0.0.2") == [401, 401, 429]  # nor a client that is not a trusted proxy
    assert codes(["127.0.0.3"], "127.0.0.3") == [401, 401, 401]  # a trusted proxy's clients are told apart
    store.close()
