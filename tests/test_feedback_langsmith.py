"""LangSmith: import runs with list_runs, and every answer sent as feedback, against a loopback server."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from conftest import run_cli
from fake_langsmith import API_KEY, FakeLangSmith, run

from feedback import importer, langsmith_sync, schema
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


GENERATION = {"num_candidates": 3, "temperature": 1.0, "max_new_tokens": 8}


def test_generated_candidates_become_runs_created_through_an_outage_and_ratings_their_feedback(
    langsmith, db_url
) -> None:
    store = Store.create(db_url)
    client = langsmith_sync.client_from_env()
    [pid] = store.add_prompts(["What is 2 plus 2?"])
    ids = store.add_candidates(
        pid,
        ["4.", "Four!", "5."],
        model="builtin:tiny",
        adapter="runs/sft",
        generation=GENERATION,
        langsmith_project="gen",
    )
    store.add_candidates(pid, ["4."], langsmith_project="gen")  # stored before: keeps its run, nothing new to create
    assert store.sync_status().runs_pending == 3
    store.add_annotator("ann")
    ann = store.annotator("ann")
    assert store.next_item(ann.id).prompt_id == pid
    store.submit_ranking(ann.id, pid, {ids[0]: 1, ids[1]: 1, ids[2]: 2}, client_id="answer-gen-1")
    sync = langsmith_sync.LangSmithSync(store, client)
    langsmith.up_for = 2  # LangSmith takes the first run (and names its project), then goes down mid-pass
    first = sync.run_once()
    assert (first.runs_created, first.runs_failed, first.sent) == (1, 2, 0)  # the answer waits for its runs
    assert store.sync_status().runs_pending == 2 and store.sync_status().pending == 1
    langsmith.up_for, langsmith.down = None, False
    assert sync.run_once().runs_created == 0  # backing off: not due yet
    later = sync.run_once(now=utcnow() + dt.timedelta(minutes=10))
    assert (later.runs_created, later.sent) == (2, 1)
    with store.engine.connect() as connection:
        runs = dict(connection.exec_driver_sql("SELECT id, langsmith_run_id FROM candidates").all())
    assert set(langsmith.created_runs) == {runs[i] for i in ids}  # each run once, under the id stored
    run = langsmith.created_runs[runs[ids[2]]]
    assert run["session_name"] == "gen" and run["inputs"] == {
        "messages": [{"role": "user", "content": "What is 2 plus 2?"}]
    }
    assert run["outputs"] == {"output": "5."} and run["run_type"] == "llm"
    assert run["extra"]["metadata"] | {"generation": GENERATION} == run["extra"]["metadata"]
    assert run["extra"]["metadata"]["model"] == "builtin:tiny" and run["extra"]["metadata"]["adapter"] == "runs/sft"
    assert sorted((f["run_id"], f["value"]) for f in langsmith.feedback.values()) == sorted(
        [(runs[ids[0]], 1), (runs[ids[1]], 1), (runs[ids[2]], 2)]
    )
    # A crash after LangSmith created a run but before the store marked it: the repeat is a 409, not a second run.
    with store.engine.begin() as connection:
        connection.execute(sa.insert(schema.pending_runs).values(candidate_id=ids[0], project="gen", attempts=0))
    assert sync.run_once().runs_created == 1 and len(langsmith.created_runs) == 3
    store.edit(ann.id, "answer-gen-1", thumbs={ids[0]: True, ids[1]: True, ids[2]: False})  # withdraws the ranks
    assert sync.run_once().sent == 1
    assert sorted(f["key"] for f in langsmith.feedback.values()) == ["thumbs"] * 3
    assert {f["session_id"] for f in langsmith.feedback.values()} == {langsmith.project_id}
    store.close()


def test_generate_records_runs_in_the_named_project_and_the_sync_creates_them_after_an_outage(
    tmp_path, langsmith, monkeypatch, capsys
) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 3 plus 4?"}\n')
    run_cli("feedback", "migrate", "--db", db)
    monkeypatch.setattr(langsmith_sync, "FIRST_BACKOFF_S", 0.0)  # retry at once: the test does not wait
    langsmith.down = True
    args = ["--db", db, "--model", "builtin:tiny", "--prompts", str(prompts), "--max-new-tokens", "8"]
    run_cli("feedback", "generate", *args, "--num-candidates", "2", "--langsmith-project", "tiny-gen")
    assert "0 runs created" in capsys.readouterr().out and langsmith.created_runs == {}
    store = Store(db)
    stored = store.sync_status().runs_pending
    assert stored >= 1
    langsmith.down = False
    run_cli("feedback", "sync", "--db", db)
    assert f"runs created {stored}" in capsys.readouterr().out and store.sync_status().runs_pending == 0
    [item] = store.records()
    texts = {run["outputs"]["output"] for run in langsmith.created_runs.values()}
    assert texts == {c.text for c in item.candidates} and len(langsmith.created_runs) == stored
    metadata = next(iter(langsmith.created_runs.values()))["extra"]["metadata"]
    assert metadata["model"] == "builtin:tiny" and metadata["generation"]["max_new_tokens"] == 8
    store.close()
