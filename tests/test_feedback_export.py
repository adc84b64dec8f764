"""Export formatters and writers on hand-made records (no database), and the export ``rlhf reward`` trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES, run_cli
from feedback_fixtures import annotate_all, tiny_items

from feedback import export
from feedback.records import Answer, Candidate, Item
from feedback.store import Store
from rlhf.data import load_split
from rlhf.results import RewardResult
from rlhf_core.errors import ConfigError
from rlhf_core.rows import Source, validate

PROMPT = [{"role": "user", "content": "What is 3 plus 4?"}]
A, B, C = Candidate(1, "Sure! 3 plus 4 is 7."), Candidate(2, "3 plus 4 is 7."), Candidate(3, "Ugh. 3 plus 5 is 8.")


def item(*answers: Answer, messages=PROMPT) -> Item:
    return Item(prompt_id=1, messages=messages, candidates=(A, B, C), answers=answers)


def ranked(prompt: str) -> Item:
    return item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), messages=[{"role": "user", "content": prompt}])


def texts(rows):
    return sorted((r["chosen"][0]["content"], r["rejected"][0]["content"], r["margin"]) for r in rows)


def test_a_ranking_gives_every_ordered_pair_and_ties_give_none() -> None:
    rows = export.pair_rows([item(Answer("x", ranks={1: 1, 2: 1, 3: 2}))], "all")
    assert texts(rows) == sorted([(A.text, C.text, 1.0), (B.text, C.text, 1.0)])  # A and B tie: no pair
    rows = export.pair_rows([item(Answer("x", ranks={1: 1, 2: 2, 3: 3}))], "all")
    assert texts(rows) == sorted([(A.text, B.text, 0.5), (A.text, C.text, 1.0), (B.text, C.text, 0.5)])
    assert all(r["prompt"] == PROMPT and r["chosen"][0]["role"] == "assistant" for r in rows)


def test_thumbs_give_every_up_down_pair_without_margin() -> None:
    rows = export.pair_rows([item(Answer("x", thumbs={1: True, 2: True, 3: False}))], "all")
    assert texts(rows) == sorted([(A.text, C.text, None), (B.text, C.text, None)])


def test_aggregation_all_keeps_every_annotator_and_majority_keeps_what_most_said() -> None:
    answers = (
        Answer("x", ranks={1: 1, 2: 2, 3: 3}),
        Answer("y", ranks={1: 2, 2: 1, 3: 3}),
        Answer("z", ranks={1: 1, 2: 3, 3: 2}),
    )
    assert len(export.pair_rows([item(*answers)], "all")) == 9
    majority = texts(export.pair_rows([item(*answers)], "majority"))
    # A>B: x (gap 1 of 2: 0.5) and z (1.0); A>C: x (1.0), y (0.5), z (0.5); B>C: x (0.5) and y (1.0).
    expected = [(A.text, B.text, 0.75), (A.text, C.text, round(2.0 / 3, 4)), (B.text, C.text, 0.75)]
    assert majority == sorted(expected)
    split = (Answer("x", ranks={1: 1, 2: 2, 3: 2}), Answer("y", ranks={1: 2, 2: 1, 3: 1}))
    assert texts(export.pair_rows([item(*split)], "majority")) == []  # 1 vs 1: no majority
    tie = (Answer("x", ranks={1: 1, 2: 2, 3: 3}), Answer("y", ranks={1: 1, 2: 1, 3: 1}))
    assert texts(export.pair_rows([item(*tie)], "majority")) == []  # one vote of two judges is no majority


def test_kto_rows_from_thumbs() -> None:
    answers = (
        Answer("x", thumbs={1: True, 3: False}),
        Answer("y", thumbs={1: True, 3: True}),
        Answer("z", thumbs={1: False}),
    )
    rows = export.kto_rows([item(*answers)], "all")
    assert sorted((r["completion"][0]["content"], r["label"]) for r in rows) == sorted(
        [(A.text, True), (A.text, True), (A.text, False), (C.text, False), (C.text, True)]
    )
    majority = export.kto_rows([item(*answers)], "majority")
    assert [(r["completion"][0]["content"], r["label"]) for r in majority] == [(A.text, True)]  # C: 1 vs 1


def test_rankings_become_kto_thumbs_above_and_below_their_middle() -> None:
    assert export.ranking_thumbs({1: 1, 2: 2, 3: 3}) == {1: True, 3: False}  # the middle one says nothing
    assert export.ranking_thumbs({5: 1, 6: 2, 7: 3, 8: 4}) == {5: True, 6: True, 7: False, 8: False}
    assert export.ranking_thumbs({1: 1, 2: 1, 3: 2}) == {1: True, 2: True, 3: False}  # ties share a rank
    assert export.ranking_thumbs({1: 1, 2: 1}) == {} and export.ranking_thumbs({}) == {}
    rows = export.kto_rows([item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), Answer("y", ranks={1: 2, 2: 1, 3: 3}))])
    labels = sorted((r["completion"][0]["content"], r["label"]) for r in rows)
    # x: A up, C down (B is its middle); y: B up, C down (A is its middle); a middle rank casts no vote
    assert labels == sorted([(A.text, True), (B.text, True), (C.text, False)])
    both = Answer("z", ranks={1: 3, 2: 2, 3: 1}, thumbs={1: True})
    assert [r["label"] for r in export.kto_rows([item(both)], "all")] == [True]  # its thumbs win over its ranking


def test_sft_rows_from_corrections() -> None:
    answers = (
        Answer("x", thumbs={3: False}, correction="Sure! 3 plus 4 is 7."),
        Answer("y", correction="Sure! 3 plus 4 is 7."),
    )
    rows = export.sft_rows([item(*answers)])
    assert len(rows) == 1 and rows[0]["messages"] == [*PROMPT, {"role": "assistant", "content": "Sure! 3 plus 4 is 7."}]
    validate([{k: v for k, v in rows[0].items() if k != "_prompt"}], "sft", export_source())


def export_source():

    return Source("test")


def test_split_is_by_prompt_deterministic_and_stable() -> None:
    items = [
        item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), messages=[{"role": "user", "content": f"q{i}"}]) for i in range(200)
    ]
    rows = export.pair_rows(items, "all")
    first = export.split_rows(rows, 0.25, seed=1)
    assert first == export.split_rows(rows, 0.25, seed=1)
    assert first != export.split_rows(rows, 0.25, seed=2)
    train_prompts = {json.dumps(r["prompt"]) for r in first["train"]}
    test_prompts = {json.dumps(r["prompt"]) for r in first["test"]}
    assert not train_prompts & test_prompts
    assert 30 <= len(test_prompts) <= 70  # about a quarter of 200
    more = export.split_rows(
        rows
        + export.pair_rows(
            [item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), messages=[{"role": "user", "content": "new"}])], "all"
        ),
        0.25,
        seed=1,
    )
    assert {json.dumps(r["prompt"]) for r in more["test"]} >= test_prompts  # adding data moves no prompt
    assert all("_prompt" not in r for r in first["train"])


def test_writers_produce_jsonl_parquet_and_a_saved_dataset_that_load_back(tmp_path: Path) -> None:
    items = [
        item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), messages=[{"role": "user", "content": f"q{i}"}]) for i in range(40)
    ]
    report = export.export(items, "pairs", tmp_path, test_fraction=0.3, seed=0)
    assert report.rows["train"] + report.rows["test"] == 120 and report.rows["test"] > 0
    from datasets import load_dataset, load_from_disk

    for split in ("train", "test"):
        rows, source = load_split(str(tmp_path), split)
        assert len(rows) == report.rows[split]
        validate(rows, "preference", source)
        parquet = load_dataset("parquet", data_files=str(tmp_path / f"{split}.parquet"), split="train")
        assert parquet.to_list() == rows
    assert load_from_disk(str(tmp_path / "hf"))["test"].num_rows == report.rows["test"]
    assert json.loads((tmp_path / "export.json").read_text())["rows"] == report.rows


def test_push_to_hub_needs_a_token_and_uses_it(tmp_path: Path, monkeypatch) -> None:
    items = [item(Answer("x", ranks={1: 1, 2: 2, 3: 3}))]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(export, "hub_token", lambda: None)
    with pytest.raises(ValueError, match="needs a hub token"):
        export.export(items, "pairs", tmp_path / "a", push_to_hub="me/prefs")
    assert not (tmp_path / "a").exists()
    pushed = {}

    def fake_push(self, repo, private, token):
        pushed.update(repo=repo, private=private, token=token, splits=sorted(self))

    from datasets import DatasetDict

    monkeypatch.setattr(export, "hub_token", lambda: "hf_secret")
    monkeypatch.setattr(DatasetDict, "push_to_hub", fake_push)
    report = export.export(items, "pairs", tmp_path / "b", test_fraction=0.0, push_to_hub="me/prefs")
    assert pushed == {"repo": "me/prefs", "private": True, "token": "hf_secret", "splits": ["train"]}
    assert report.pushed_to == "me/prefs"


def _ranked_items(n: int = 40) -> list[Item]:
    return [ranked(f"q{i}") for i in range(n)]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_never_mixes_with_an_earlier_one_and_overwrite_replaces_the_whole_folder(tmp_path: Path) -> None:
    out = tmp_path / "d"
    export.export(_ranked_items(), "pairs", out, test_fraction=0.5)
    first = _listing(out)
    assert {"train.jsonl", "test.jsonl", "test.parquet", "export.json"} <= set(first)
    with pytest.raises(ConfigError, match=r"export folder .*/d: not empty .* --overwrite"):
        export.export(_ranked_items(), "pairs", out, test_fraction=0.0)
    assert _listing(out) == first  # refused before anything was written
    report = export.export(_ranked_items(), "pairs", out, test_fraction=0.0, overwrite=True)
    files = {p.name for p in out.iterdir()}
    assert files == {"train.jsonl", "train.parquet", "hf", "export.json"}  # no test split of the first export left
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == report.files and {Path(f).name for f in manifest["files"]} == files - {"export.json"}
    # One format after another: a kto export replaced by an sft one leaves no kto row behind.
    kto = [
        item(Answer("x", thumbs={1: True, 3: False}), messages=[{"role": "user", "content": f"k{i}"}]) for i in range(9)
    ]
    export.export(kto, "kto", out, test_fraction=0.5, overwrite=True)
    assert "completion" in (out / "test.jsonl").read_text()
    sft = [
        item(Answer("x", ranks={1: 1}, correction=f"fixed {i}"), messages=[{"role": "user", "content": f"s{i}"}])
        for i in range(9)
    ]
    export.export(sft, "sft", out, test_fraction=0.5, overwrite=True, writers=["jsonl"])
    rows = [
        json.loads(line) for name in ("train.jsonl", "test.jsonl") for line in (out / name).read_text().splitlines()
    ]
    assert rows and all(set(r) == {"messages", *export.PROVENANCE} for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.")]  # no temporary folder left


def test_an_export_refuses_a_file_an_unwritable_place_and_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me too")
    refused = [
        (a_file, False, "exists and is not a folder"),
        (a_file, True, "exists and is not a folder"),
        (a_file / "sub", False, "cannot write in"),
        (Path("/proc/rlhf-export"), False, "cannot create it"),  # unwritable, even for root
        (mine, True, "holds no export.json, so it is not an earlier export"),
    ]
    for out, overwrite, message in refused:
        with pytest.raises(ConfigError, match=message) as error:
            export.export(_ranked_items(4), "pairs", out, overwrite=overwrite)
        assert "\n" not in str(error.value)
    assert a_file.read_text() == "keep me" and _listing(mine) == {"thesis.tex": b"keep me too"}


def test_an_export_that_fails_while_writing_leaves_nothing_and_keeps_the_earlier_one(
    tmp_path: Path, monkeypatch
) -> None:
    def disk_full(splits, folder: Path) -> list[Path]:
        (folder / "train.parquet").write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(export.WRITER_FUNCTIONS, "parquet", disk_full)
    with pytest.raises(ConfigError, match="No space left on device"):
        export.export(_ranked_items(), "pairs", tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
    monkeypatch.undo()
    export.export(_ranked_items(), "pairs", tmp_path / "old")
    earlier = _listing(tmp_path / "old")
    monkeypatch.setitem(export.WRITER_FUNCTIONS, "parquet", disk_full)
    with pytest.raises(ConfigError, match="nothing changed"):
        export.export(_ranked_items(), "pairs", tmp_path / "old", overwrite=True, test_fraction=0.0)
    assert _listing(tmp_path / "old") == earlier and [p.name for p in tmp_path.iterdir()] == ["old"]


def test_pairs_exported_from_a_simulated_annotator_train_with_rlhf_reward(tmp_path: Path) -> None:
    store = Store.create(f"sqlite:///{tmp_path / 'f.db'}")
    store.import_items(tiny_items(30))
    store.add_annotator("gold")
    assert annotate_all(store, store.annotator("gold").id) == 30
    out = tmp_path / "pairs"
    run_cli("feedback", "export", "--db", store.url, "--format", "pairs", "--out", str(out), "--test-fraction", "0.2")
    assert (out / "train.jsonl").is_file() and (out / "test.jsonl").is_file()
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected", "margin", *export.PROVENANCE}
    run_dir = tmp_path / "reward"
    run_cli(
        "reward",
        "--config",
        str(RECIPES / "tiny" / "reward.yaml"),
        "--model_name_or_path",
        "builtin:tiny",
        "--dataset_name",
        str(out),
        "--output_dir",
        str(run_dir),
        "--max_steps",
        "3",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
    )
    result = RewardResult.read(run_dir)
    assert result.global_steps == 3 and result.train_rows == sum(1 for _ in (out / "train.jsonl").open())
    assert result.eval is not None and result.eval.pairs == sum(1 for _ in (out / "test.jsonl").open())
