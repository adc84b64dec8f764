"""Annotation batches (rounds of iterated RLHF) on SQLite and PostgreSQL: recorded once, shown, reported, exported.

A round puts the prompts a selector chose into the store with ``assign_batch``; the annotator sees
only the round's number, the admin sees progress per round, and every exported row carries its
prompt's round, selector and score.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import run_cli
from feedback_fixtures import annotate_all, auth, tiny_items

from feedback import export, schema
from feedback.store import BatchProgress, Invalid, NotFound, Store, answers, items, make_engine, migrate, utcnow
from feedback.store.db import transaction
from feedback.store.views import AnswerContent


def _prompt_ids(store: Store, n_prompts: int) -> list[int]:
    return store.import_items(tiny_items(n_prompts)).prompt_ids


def _provenance(store: Store) -> dict[int, tuple[int | None, str | None, float | None]]:
    return {item.prompt_id: (item.batch, item.selected_by, item.selection_score) for item in store.records()}


def test_assign_batch_records_round_selector_and_scores_once(store: Store) -> None:
    p1, p2, p3, p4 = _prompt_ids(store, 4)
    assert store.assign_batch([p1, p2], 1, "random") == 2
    assert store.assign_batch([p1, p2], 1, "random") == 0  # a re-run after a crash changes nothing
    assert store.assign_batch([p2, p3], 2, " uncertainty ", scores=[0.9, 0.25]) == 1  # p2 keeps its first batch
    assert store.assign_batch([], 3, "random") == 0
    assert store.assign_batch([p4, p4], 3, "uncertainty", scores=[0.5, 0.75]) == 1  # listed twice: once, first score
    assert _provenance(store) == {
        p1: (1, "random", None),
        p2: (1, "random", None),
        p3: (2, "uncertainty", 0.25),
        p4: (3, "uncertainty", 0.5),
    }


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ({"batch": True}, Invalid, "batch is a round number"),
        ({"batch": 0}, Invalid, "batch is a round number"),
        ({"batch": 2**31}, Invalid, "batch is a round number"),
        ({"batch": "1"}, Invalid, "batch is a round number"),
        ({"selected_by": ""}, Invalid, "1 to 32 characters"),
        ({"selected_by": "   "}, Invalid, "1 to 32 characters"),
        ({"selected_by": "x" * 33}, Invalid, "1 to 32 characters"),
        ({"selected_by": 7}, Invalid, "selected_by names the selector"),
        ({"selected_by": "\ud800"}, Invalid, "lone surrogate"),
        ({"scores": [0.5, math.nan]}, Invalid, "score 1 must be a finite number"),
        ({"scores": [math.inf, 0.5]}, Invalid, "score 0 must be a finite number"),
        ({"scores": [True, 0.5]}, Invalid, "score 0 must be a finite number"),
        ({"scores": ["0.5", 0.5]}, Invalid, "score 0 must be a finite number"),
        ({"scores": [0.5]}, Invalid, "1 scores for 2 prompts"),
        ({"prompt_ids": "bool"}, Invalid, "prompt ids are whole numbers"),
        ({"prompt_ids": "unknown"}, NotFound, "no prompt"),
    ],
)
def test_assign_batch_refuses_bad_input_and_changes_nothing(
    store: Store, call: dict[str, Any], error: type[Exception], message: str
) -> None:
    p1, p2 = _prompt_ids(store, 2)
    prompt_ids = {"bool": [p1, True], "unknown": [p1, 999_999]}.get(call.get("prompt_ids"), [p1, p2])
    arguments = {"batch": 1, "selected_by": "uncertainty", "scores": [0.5, 0.5], **call, "prompt_ids": prompt_ids}
    before = store.records()
    with pytest.raises(error, match=message):
        store.assign_batch(**arguments)
    assert store.records() == before


def test_the_annotator_is_handed_the_round_and_nothing_of_its_selection(store: Store) -> None:
    p1, p2 = _prompt_ids(store, 2)
    store.assign_batch([p1], 3, "uncertainty", scores=[0.8])
    store.add_annotator("ann")
    ann = store.annotator("ann")
    item = store.next_item(ann.id)
    assert item is not None and (item.prompt_id, item.batch) == (p1, 3)
    assert store.held_item(ann.id, p1)[0].batch == 3
    annotate_all(store, ann.id)
    assert store.held_item(ann.id, p2)[0].batch is None


def test_progress_counts_items_complete_and_answers_per_batch(store: Store) -> None:
    assert store.progress().batches == []
    p1, p2, p3, p4, p5 = _prompt_ids(store, 5)
    assert store.progress().batches == [BatchProgress(None, None, 5, 0, 0, None)]  # no rounds yet: one line
    store.assign_batch([p1, p2], 1, "random")
    store.assign_batch([p3, p4], 2, "uncertainty", scores=[0.75, 0.25])
    store.update_settings(overlap=2)
    for name in ("a", "b"):
        store.add_annotator(name)
    a, b = store.annotator("a"), store.annotator("b")
    assert annotate_all(store, a.id) == 5
    first = store.next_item(b.id)
    assert first is not None and first.prompt_id == p1
    store.submit_ranking(b.id, p1, {c["id"]: 1 for c in first.candidates}, client_id="b-answers-p1")
    assert store.progress().batches == [
        BatchProgress(batch=1, selected_by="random", items=2, complete=1, answers=3, mean_selection_score=None),
        BatchProgress(batch=2, selected_by="uncertainty", items=2, complete=0, answers=2, mean_selection_score=0.5),
        BatchProgress(batch=None, selected_by=None, items=1, complete=0, answers=1, mean_selection_score=None),
    ]
    store.assign_batch([p5], 2, "random", scores=[1.25])  # a round that mixed selectors names both
    mixed = store.progress().batches[1]
    assert (mixed.selected_by, mixed.items, mixed.mean_selection_score) == ("random, uncertainty", 3, 0.75)
    assert [line.batch for line in store.progress().batches] == [1, 2]


def test_records_and_every_export_format_carry_the_round_selector_and_score(store: Store, tmp_path: Path) -> None:
    p1, p2, p3 = _prompt_ids(store, 3)
    store.assign_batch([p2], 1, "random")
    store.assign_batch([p3], 2, "uncertainty", scores=[0.625])
    store.add_annotator("gold")
    gold = store.annotator("gold")
    assert annotate_all(store, gold.id) == 3
    expected = {p1: (None, None, None), p2: (1, "random", None), p3: (2, "uncertainty", 0.625)}
    assert _provenance(store) == expected
    by_prompt = {json.dumps(item.messages): expected[item.prompt_id] for item in store.records()}

    report = export.export(store, "pairs", tmp_path / "pairs", test_fraction=0.0)
    rows = [json.loads(line) for line in (tmp_path / "pairs" / "train.jsonl").read_text().splitlines()]
    assert rows and all(
        (row["batch"], row["selected_by"], row["selection_score"]) == by_prompt[json.dumps(row["prompt"])]
        for row in rows
    )
    assert {by_prompt[json.dumps(row["prompt"])][0] for row in rows} == {None, 1, 2}
    counts = dict(Counter(export.UNBATCHED if row["batch"] is None else str(row["batch"]) for row in rows))
    assert report.rows_per_batch == counts and list(report.rows_per_batch) == ["1", "2", export.UNBATCHED]
    assert json.loads((tmp_path / "pairs" / "export.json").read_text())["rows_per_batch"] == counts
    from datasets import load_dataset, load_from_disk

    parquet = load_dataset("parquet", data_files=str(tmp_path / "pairs" / "train.parquet"), split="train")
    assert parquet.to_list() == rows
    assert load_from_disk(str(tmp_path / "pairs" / "hf"))["train"].to_list() == rows

    export.export(store, "kto", tmp_path / "kto", test_fraction=0.0, writers=["jsonl"])
    thumbs = [json.loads(line) for line in (tmp_path / "kto" / "train.jsonl").read_text().splitlines()]
    assert thumbs and all(
        (row["batch"], row["selected_by"], row["selection_score"]) == by_prompt[json.dumps(row["prompt"])]
        for row in thumbs
    )


def test_sft_rows_carry_the_round_of_their_prompt(store: Store) -> None:
    (p1,) = _prompt_ids(store, 1)
    store.assign_batch([p1], 4, "uncertainty", scores=[0.5])
    store.add_annotator("ann")
    store.submit(store.annotator("ann").id, p1, client_id="correction-1", correction="A better answer.")
    [row] = export.sft_rows(store.records())
    assert (row["batch"], row["selected_by"], row["selection_score"]) == (4, "uncertainty", 0.5)


def test_the_cli_reports_progress_and_exported_rows_per_round(store: Store, tmp_path: Path, capsys) -> None:
    p1, _ = _prompt_ids(store, 2)
    run_cli("feedback", "progress", "--db", store.url)
    assert "per round" not in capsys.readouterr().out  # no rounds, no table
    store.assign_batch([p1], 1, "uncertainty", scores=[0.5])
    store.add_annotator("gold")
    annotate_all(store, store.annotator("gold").id)
    run_cli("feedback", "progress", "--db", store.url)
    out = capsys.readouterr().out
    assert re.search(r"round 1 +uncertainty +1 items +1 complete +1 answers, mean selection score 0\.500\n", out)
    assert re.search(r"no round +- +1 items +1 complete +1 answers\n", out)
    run_cli("feedback", "export", "--db", store.url, "--format", "pairs", "--out", str(tmp_path / "o"))
    assert re.search(rf"rows per round: 1 \d+, {export.UNBATCHED} \d+\n", capsys.readouterr().out)


def test_the_admin_sees_progress_per_round_and_the_annotator_only_the_round(app_store) -> None:
    client, store, tokens = app_store
    first, second, _ = (pid for pid, _ in store.prompts())
    store.assign_batch([first, second], 1, "uncertainty", scores=[0.75, 0.25])
    ann = auth(tokens["ann"])
    response = client.get("/api/items/next", headers=ann)
    item = response.json()["item"]
    assert (item["prompt_id"], item["batch"]) == (first, 1)
    assert "uncertainty" not in response.text and "selected_by" not in item and "0.75" not in response.text
    assert client.get(f"/api/items/{first}", headers=ann).json()["batch"] == 1
    ranking = [{"candidate_id": c["id"], "rank": i + 1} for i, c in enumerate(item["candidates"])]
    posted = client.post(
        "/api/answers", json={"client_id": "ann-answer-0001", "prompt_id": first, "ranking": ranking}, headers=ann
    )
    assert posted.status_code == 201
    progress = client.get("/api/admin/progress", headers=auth(tokens["admin"])).json()
    assert progress["batches"] == [
        {
            "batch": 1,
            "selected_by": "uncertainty",
            "items": 2,
            "complete": 1,
            "answers": 1,
            "mean_selection_score": 0.5,
        },
        {"batch": None, "selected_by": None, "items": 1, "complete": 0, "answers": 0, "mean_selection_score": None},
    ]
    assert client.get("/api/admin/progress", headers=ann).status_code == 403
    assert client.get("/admin").status_code == 200 and "Progress per round" in client.get("/admin").text


def test_the_upgrade_from_0002_keeps_every_prompt_candidate_and_answer(db_url: str) -> None:
    assert migrate(db_url, "0002") == "0002"
    engine = make_engine(db_url)
    # The store's own write path, on the 0002 tables (it writes no column 0003 adds); the annotator as 0002
    # stored one (the store now writes the name's key, which 0004 adds).
    with transaction(engine) as c:
        prompt_ids = items.import_items(c, tiny_items(2)).prompt_ids
        values = {"name": "ann", "role": "annotator", "active": True, "created_at": utcnow()}
        ann_id = c.execute(sa.insert(schema.annotators).values(values).returning(schema.annotators.c.id)).scalar_one()
        candidate_ids = list(
            c.execute(
                sa.text("SELECT id FROM candidates WHERE prompt_id = :p ORDER BY id"), {"p": prompt_ids[0]}
            ).scalars()
        )
        ranks = {cid: rank for rank, cid in enumerate(candidate_ids, start=1)}
        answers.submit(
            c, ann_id, prompt_ids[0], "before-upgrade", AnswerContent({}, ranks, "ok", None, None), False, False
        )
    with engine.connect() as c:
        assert "batch" not in {column["name"] for column in sa.inspect(c).get_columns("prompts")}
    engine.dispose()

    assert migrate(db_url) == "0004"
    store = Store(db_url)
    first, second = store.records()
    assert [first.prompt_id, second.prompt_id] == prompt_ids
    assert [c.text for c in first.candidates] == tiny_items(2)[0]["candidates"]
    [answer] = first.answers
    assert (answer.annotator, answer.ranks, answer.comment) == ("ann", ranks, "ok")
    assert (first.batch, first.selected_by, first.selection_score) == (None, None, None)
    assert store.assign_batch(prompt_ids, 1, "random") == 2
    assert store.progress().batches == [BatchProgress(1, "random", 2, 1, 1, None)]
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as c:  # the database holds batch >= 1 too
        c.execute(sa.update(schema.prompts).values(batch=0))
    store.close()

    assert migrate(db_url, "0002", downgrade=True) == "0002"  # and back: the rounds go, the answers stay
    engine = make_engine(db_url)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM submissions")).scalar_one() == 1
        assert c.execute(sa.text("SELECT count(*) FROM prompts")).scalar_one() == 2
    engine.dispose()
