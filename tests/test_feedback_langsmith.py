"""LangSmith: import runs with list_runs, and every answer sent as feedback, against a loopback server."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fake_langsmith import API_KEY, FakeLangSmith, run

from feedback import importer, langsmith_sync
from feedback.store import Store, utcnow

QUESTION = "What is 3 plus 4?"


def _runs(session: str) -> list[dict]:
    chat = {
        "messages": [
            [
                {
                    "lc": 1,
                    "type": "constructor",
                    "id": ["langchain", "schema", "messages", "HumanMessage"],
                    "kwargs": {"content": QUESTION, "type": "human"},
                }
            ]
        ]
    }
    return [
        run(str(uuid.uuid4()), chat, {"generations": [[{"text": "Sure! 3 plus 4 is 7."}]]}, session),
        run(str(uuid.uuid4()), {"messages": [{"role": "user", "content": QUESTION}]}, {"output": "Ugh. 7."}, session),
        run(
            str(uuid.uuid4()),
            {"prompt": QUESTION},
            {"choices": [{"message": {"role": "assistant", "content": "3 plus 5 is 8."}}]},
            session,
        ),
        run(str(uuid.uuid4()), {"prompt": "What is 1 plus 1?"}, {"output": "2."}, session),
        run(
            str(uuid.uuid4()),
            {"prompt": "What is 1 plus 1?"},
            {"output": {"role": "assistant", "content": "It is 2."}},
            session,
        ),
        run(str(uuid.uuid4()), {"unknown": 1}, {"output": "?"}, session),  # unreadable: counted, not imported
    ]


@pytest.fixture
def langsmith(monkeypatch):
    session = str(uuid.uuid4())
    with FakeLangSmith(_runs(session)) as fake:
        monkeypatch.setenv("LANGSMITH_API_KEY", API_KEY)
        monkeypatch.setenv("LANGSMITH_ENDPOINT", fake.url)
        from langsmith import utils

        utils.get_env_var.cache_clear()  # the client caches environment lookups
        yield fake
        utils.get_env_var.cache_clear()


@pytest.fixture
def synced_store(langsmith, db_url):
    """A store (SQLite, then PostgreSQL) with the fake project's runs imported and an annotator."""
    store = Store.create(db_url)
    client = langsmith_sync.client_from_env()
    report, unreadable = importer.import_langsmith(store, client, "my-project")
    assert (report.prompts_added, report.candidates_added, unreadable) == (2, 5, 1)
    store.add_annotator("ann")
    yield store, client
    store.close()


def test_runs_are_imported_as_items_with_their_run_ids(synced_store, langsmith) -> None:
    store, _ = synced_store
    items = store.records()
    assert items[0].messages == [{"role": "user", "content": QUESTION}]
    assert sorted(c.text for c in items[0].candidates) == [
        "3 plus 5 is 8.",
        "Sugh"[:0] + "Sure! 3 plus 4 is 7.",
        "Ugh. 7.",
    ]
    assert all(c.model == "gpt-test" for c in items[0].candidates)
    assert ("POST", "/runs/query") in langsmith.requests and ("GET", "/sessions") in langsmith.requests
    assert sum(1 for r in langsmith.requests if r == ("POST", "/runs/query")) == 3  # three cursor pages of 2


def test_every_answer_becomes_feedback_with_annotator_and_correction(synced_store, langsmith) -> None:
    store, client = synced_store
    ann = store.annotator("ann")
    item = store.next_item(ann.id)
    ids = [c["id"] for c in item.candidates]
    store.submit(
        ann.id,
        item.prompt_id,
        client_id="answer-0001",
        ranks={ids[0]: 1, ids[1]: 2, ids[2]: 2},
        comment="first is best",
        correction="Sure! 3 plus 4 is 7. Hope that helps!",
        corrected_candidate_id=ids[2],
    )
    result = langsmith_sync.LangSmithSync(store, client).run_once()
    assert (result.sent, result.failed) == (1, 0)
    sent = sorted(langsmith.feedback.values(), key=lambda f: -f["score"])
    assert [f["key"] for f in sent] == ["rank"] * 3 and [f["score"] for f in sent] == [1.0, 0.0, 0.0]
    assert {f["value"] for f in sent} == {1, 2}
    with store.engine.connect() as connection:
        runs = dict(connection.exec_driver_sql("SELECT id, langsmith_run_id FROM candidates").all())
    assert {f["run_id"] for f in sent} == {runs[i] for i in ids}
    first = sent[0]
    assert first["comment"] == "first is best" and first["feedback_source"]["metadata"]["annotator"] == "ann"
    assert first["feedback_source"]["metadata"]["answer_id"] == "answer-0001"
    assert len({f["feedback_group_id"] for f in sent}) == 1
    corrected = [f for f in sent if f.get("correction")]
    assert len(corrected) == 1 and corrected[0]["run_id"] == runs[ids[2]]
    assert store.sync_status().pending == 0
    assert langsmith_sync.LangSmithSync(store, client).run_once().sent == 0  # nothing twice


def test_an_outage_loses_nothing_and_the_store_retries(synced_store, langsmith) -> None:
    store, client = synced_store
    ann = store.annotator("ann")
    item = store.next_item(ann.id)
    thumbs = {c["id"]: i == 0 for i, c in enumerate(item.candidates)}
    langsmith.down = True
    receipt = store.submit_rating(ann.id, item.prompt_id, thumbs, client_id="answer-0002")
    sync = langsmith_sync.LangSmithSync(store, client)
    assert sync.run_once().failed == 1
    status = store.sync_status()
    assert status.pending == 1 and status.failing == 1
    assert "503" in status.last_error, status.last_error
    assert store.submission_ids() == [receipt.id]  # the rating itself is safe
    langsmith.down = False
    assert sync.run_once().sent == 0  # backing off: not due yet
    assert sync.run_once(now=utcnow() + dt.timedelta(minutes=10)).sent == 1
    assert sorted(f["value"] for f in langsmith.feedback.values()) == ["down", "down", "up"]


def test_a_resend_after_a_crash_updates_instead_of_duplicating(synced_store, langsmith) -> None:
    store, client = synced_store
    ann = store.annotator("ann")
    item = store.next_item(ann.id)
    thumbs = {c["id"]: True for c in item.candidates}
    receipt = store.submit_rating(ann.id, item.prompt_id, thumbs, client_id="answer-0003")
    [job] = store.pending_sync()
    for spec in langsmith_sync.feedback_for(job):  # LangSmith got them, then the server died before marking
        langsmith_sync.send(client, spec, create=True)
    assert langsmith_sync.LangSmithSync(store, client).run_once().sent == 1  # 409 -> update, no error
    assert len(langsmith.feedback) == len(thumbs)
    store.edit(ann.id, receipt.id, thumbs={c: False for c in thumbs})
    assert langsmith_sync.LangSmithSync(store, client).run_once().sent == 1
    assert len(langsmith.feedback) == len(thumbs) and {f["value"] for f in langsmith.feedback.values()} == {"down"}
    patched = [path for method, path in langsmith.requests if method == "PATCH"]
    assert len(patched) == 2 * len(thumbs)  # once after the 409, once for the edit


def test_an_edit_of_a_synced_answer_leaves_no_stale_feedback_in_langsmith(synced_store, langsmith) -> None:
    store, client = synced_store
    ann = store.annotator("ann")
    item = store.next_item(ann.id)
    ids = [c["id"] for c in item.candidates]
    receipt = store.submit_rating(
        ann.id, item.prompt_id, {i: True for i in ids}, client_id="answer-0005", comment="all fine"
    )
    sync = langsmith_sync.LangSmithSync(store, client)
    assert sync.run_once().sent == 1 and len(langsmith.feedback) == 3
    # The annotator takes back two thumbs and drops the comment: those scores must leave LangSmith.
    store.edit(ann.id, receipt.id, thumbs={ids[0]: False}, expected_revision=1)
    assert sync.run_once().sent == 1
    [left] = langsmith.feedback.values()
    assert (left["key"], left["score"], left["value"], left.get("comment")) == ("thumbs", 0.0, "down", None)
    # Thumbs turned into a ranking: the thumbs feedback goes, rank feedback comes.
    store.edit(ann.id, receipt.id, ranks={ids[0]: 2, ids[1]: 1, ids[2]: 2}, expected_revision=2)
    assert sync.run_once().sent == 1
    assert sorted((f["key"], f["value"]) for f in langsmith.feedback.values()) == [
        ("rank", 1),
        ("rank", 2),
        ("rank", 2),
    ]
    assert ("DELETE", f"/feedback/{left['id']}") in langsmith.requests
    assert store.sync_status().pending == 0
    store.mark_synced(receipt.id, 1)  # a slow, older sync pass finishing late does not move the mark back
    assert store.sync_status().pending == 0 and sync.run_once().sent == 0


def test_candidates_without_a_run_are_not_sent(tmp_path, langsmith) -> None:
    store = Store.create(f"sqlite:///{tmp_path / 'g.db'}")
    [pid] = store.add_prompts(["q"])
    ids = store.add_candidates(pid, ["a", "b"])
    store.add_annotator("ann")
    store.submit_rating(store.annotator("ann").id, pid, {ids[0]: True}, client_id="answer-0004")
    assert store.sync_status().pending == 0 and store.pending_sync() == []
