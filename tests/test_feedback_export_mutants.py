"""The export's promises the mutation run (scripts/mutation.py) found unguarded, on hand-made records.

Majority votes over answers that rated only some candidates, the stage checks the rows go through
(and the name they give in errors), the split's seed and its independence of key order, what the
report records, the permissions of what is written, the one-line errors, and how a folder is
written whole: built beside its place, an earlier export set aside there and put back on failure.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from feedback import export
from feedback.records import Answer, Candidate, Item
from rlhf_core.errors import ConfigError
from rlhf_core.rows import DataError

PROMPT = [{"role": "user", "content": "What is 3 plus 4?"}]
A, B, C = Candidate(1, "Sure! 3 plus 4 is 7."), Candidate(2, "3 plus 4 is 7."), Candidate(3, "Ugh. 3 plus 5 is 8.")


def item(*answers: Answer, prompt: str = "What is 3 plus 4?", candidates=(A, B, C)) -> Item:
    return Item(prompt_id=1, messages=[{"role": "user", "content": prompt}], candidates=candidates, answers=answers)


def ranked(prompt: str) -> Item:
    return item(Answer("x", ranks={1: 1, 2: 2, 3: 3}), prompt=prompt)


def test_a_majority_counts_only_the_answers_that_rated_both_candidates() -> None:
    # x rated 1 and 3, y rated 1 and 2: the pair (1, 2) was judged by y alone, who preferred 1 -> kept
    items = [item(Answer("x", thumbs={1: True, 3: False}), Answer("y", thumbs={1: True, 2: False}))]
    rows = export.pair_rows(items, "majority")
    pairs = sorted((r["chosen"][0]["content"], r["rejected"][0]["content"], r["margin"]) for r in rows)
    assert pairs == sorted([(A.text, B.text, None), (A.text, C.text, None)])  # thumbs carry no margin


def test_build_aggregates_as_asked_checks_rows_as_the_stage_will_and_splits_with_its_seed() -> None:
    answers = (Answer("x", ranks={1: 1, 2: 2, 3: 3}), Answer("y", ranks={1: 2, 2: 1, 3: 3}))
    assert len(export.build([item(*answers)], "pairs", "all", 0.0, 0)["train"]) == 6  # both annotators' 3 pairs
    assert len(export.build([item(*answers)], "pairs", "majority", 0.0, 0)["train"]) == 2  # A>C, B>C
    twins = item(Answer("x", ranks={1: 1, 2: 2}), candidates=(A, Candidate(2, A.text)))
    with pytest.raises(DataError, match=r"pairs export \[train\]: row 1: 'chosen': identical to 'rejected'"):
        export.build([twins], "pairs", "all", 0.0, 0)
    items = [ranked(f"prompt {i}") for i in range(20)]
    splits = export.build(items, "pairs", "all", 0.5, 3)
    in_test = {r["prompt"][0]["content"] for r in splits["test"]}
    assert in_test == {f"prompt {i}" for i in range(20) if export.in_test_split(items[i].messages, 0.5, 3)}
    assert 0 < len(in_test) < 20


def test_the_split_depends_on_the_prompt_not_on_its_key_order() -> None:
    for i in range(20):
        forward = [{"role": "user", "content": f"prompt {i}"}]
        backward = [{"content": f"prompt {i}", "role": "user"}]
        assert export.in_test_split(forward, 0.5, 0) == export.in_test_split(backward, 0.5, 0)


def test_build_and_export_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^format must be one of \('pairs', 'kto', 'sft'\), got 'csv'$"):
        export.build([], "csv", "all", 0.0, 0)
    with pytest.raises(ValueError, match=r"^aggregation must be one of \('majority', 'all'\), got 'any'$"):
        export.build([], "pairs", "any", 0.0, 0)
    with pytest.raises(ValueError, match=r"^unknown writer\(s\) \['csv'\]; known: \['jsonl', 'parquet', 'disk'\]$"):
        export.export([ranked("p")], "pairs", "unused", writers=["jsonl", "csv"])


def test_push_to_hub_without_a_token_says_how_to_get_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(export, "hub_token", lambda: None)
    message = r"^push_to_hub needs a hub token: set HF_TOKEN or run `huggingface-cli login`$"
    with pytest.raises(ValueError, match=message):
        export.export([ranked("p")], "pairs", tmp_path / "a", push_to_hub="me/prefs")


class StandInStore:
    """What export() reads of a :class:`feedback.store.Store`: its records (no database)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def records(self) -> list[Item]:
        return self.items


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_export_reports_what_it_wrote_with_owner_only_permissions(tmp_path: Path) -> None:
    items = [ranked(f"prompt {i}") for i in range(20)]
    out = tmp_path / "new" / "export"  # its parent does not exist yet
    report = export.export(StandInStore(items), "pairs", out, aggregation="all", writers=["jsonl", "parquet", "disk"])
    # the defaults: test fraction .1 and seed 0
    test_prompts = [i for i in range(20) if export.in_test_split(items[i].messages, 0.1, 0)]
    assert report.rows == {"train": 3 * (20 - len(test_prompts)), "test": 3 * len(test_prompts)}
    written_test = out / "test.jsonl"
    in_test = {json.loads(line)["prompt"][0]["content"] for line in written_test.read_text().splitlines()}
    assert in_test == {f"prompt {i}" for i in test_prompts} != set()
    assert (report.format, report.aggregation, report.out_dir) == ("pairs", "all", str(out))
    assert (report.items, report.answers, report.rows_per_batch) == (20, 20, {export.UNBATCHED: 60})
    splits = ("train", "test")
    written = [out / f"{name}.{suffix}" for suffix in ("jsonl", "parquet") for name in splits] + [out / "hf"]
    assert report.files == [str(p) for p in written]
    assert json.loads((out / "export.json").read_text())["files"] == report.files
    assert _mode(out) == 0o700
    for path in [out / "export.json", *out.rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_an_export_with_no_rows_warns_naming_its_format(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="feedback.export"):
        report = export.export([item()], "kto", tmp_path / "empty")
    assert report.rows == {"train": 0, "test": 0} and report.files == []
    assert [r.getMessage() for r in caplog.records] == [
        "kto export: no rows (no answers of the kind this format needs yet)"
    ]


def test_splits_never_move_a_prompt_between_versions() -> None:
    """The split of a prompt is a fixed function of its text and the seed (non-ASCII text as itself):
    a later version re-exporting the same prompts must not move any to the other split."""
    prompts = ["Ça va ?", "¿Qué es 3 más 4?", "日本語で答えて", "naïve café"]
    prompts += ["Größe?", "Ελληνικά", "emoji 🙂", "façade"]
    splits = [export.in_test_split([{"role": "user", "content": p}], 0.5, 0) for p in prompts]
    assert splits == [False, True, True, True, True, False, True, True]


def test_the_formatters_default_to_majority_votes() -> None:
    answers = (Answer("x", ranks={1: 1, 2: 2, 3: 3}), Answer("y", ranks={1: 2, 2: 1, 3: 3}))
    assert export.pair_rows([item(*answers)]) == export.pair_rows([item(*answers)], "majority")
    assert len(export.pair_rows([item(*answers)])) == 2
    thumbs = (Answer("x", thumbs={1: True, 2: False}), Answer("y", thumbs={1: False, 2: False}))
    rows = export.kto_rows([item(*thumbs)])
    assert rows == export.kto_rows([item(*thumbs)], "majority")
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [(B.text, False)]  # 1: 1 up, 1 down
    assert all(r["prompt"] == PROMPT for r in rows)


def test_every_distinct_correction_is_a_demonstration() -> None:
    answers = (Answer("x"), Answer("y", correction="7."), Answer("z", correction="7."))
    answers += (Answer("w", correction="Seven."),)
    rows = export.sft_rows([item(*answers)])
    assert [r["messages"][-1]["content"] for r in rows] == ["7.", "Seven."]


def test_rows_per_batch_in_round_order_with_unbatched_last() -> None:
    def rows(*batches: int | None) -> list[dict[str, int | None]]:
        return [{"batch": b} for b in batches]

    counts = export.rows_per_batch({"train": rows(10, None, 2, 2), "test": rows(1, None)})
    assert list(counts.items()) == [("1", 1), ("2", 2), ("10", 1), (export.UNBATCHED, 2)]


def test_the_test_fraction_must_leave_a_training_split() -> None:
    with pytest.raises(ValueError, match=r"^test_fraction must be in \[0, 1\), got 1.0$"):
        export.split_rows([], 1.0, 0)


def test_hub_token_from_the_environment_then_the_login(monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "from-login")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert export.hub_token() == "from-login"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy")
    assert export.hub_token() == "legacy"
    monkeypatch.setenv("HF_TOKEN", "current")
    assert export.hub_token() == "current"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_export_creates_missing_parents_the_last_one_private(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "export"  # two folders missing above it
    export.export(StandInStore([ranked(f"p{i}") for i in range(4)]), "pairs", out, writers=["jsonl"])
    assert (out / "export.json").is_file()
    assert _mode(out.parent) == 0o700  # the folder made to hold the annotators' data: the owner's alone


def test_the_refusals_of_an_export_folder_name_it_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "d"
    out.mkdir()
    for name in ("b.txt", "a.txt"):
        (out / name).write_text("")
    with pytest.raises(ConfigError) as error:
        export.check_target(out, overwrite=False)
    assert str(error.value) == (
        f"export folder {out}: not empty (2 entries, e.g. 'a.txt'); an export never mixes its files with others: "
        "name a new or empty folder, or replace the whole folder with --overwrite"
    )
    with pytest.raises(ConfigError) as error:
        export.check_target(out, overwrite=True)
    assert str(error.value) == (
        f"export folder {out}: holds no export.json, so it is not an earlier export; --overwrite replaces only an "
        "export folder: name a new or empty folder"
    )
    # under a file, even one its owner may write and run
    script = tmp_path / "run.sh"
    script.write_text("")
    script.chmod(0o755)
    with pytest.raises(ConfigError) as error:
        export.check_target(script / "export", overwrite=False)
    assert (
        str(error.value) == f"export folder {script / 'export'}: cannot write in {script}; name a folder you can write"
    )
    # in a folder its user cannot write into (simulated: this suite may run as root, who may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: access(path, mode) and not (Path(path) == locked and mode & os.W_OK)
    )
    with pytest.raises(ConfigError, match=r"cannot write in .*/locked; name a folder you can write$"):
        export.check_target(locked / "export", overwrite=False)


def test_an_export_is_built_beside_its_folder_and_an_earlier_one_set_aside_there(tmp_path: Path, monkeypatch) -> None:
    """What a crash between the two renames would leave, seen as the new folder moves into place: the earlier
    export whole in ``.d.old-*/d``, the new one in ``.d.tmp-*``, both beside ``d`` (one file system)."""
    out = tmp_path / "d"
    items = StandInStore([ranked(f"p{i}") for i in range(4)])
    export.export(items, "pairs", out, writers=["jsonl"])
    rename, seen = Path.rename, []

    def watched(self: Path, target: Path) -> Path:
        if Path(target) == out and self.parent == tmp_path:  # the new export moving into place
            seen.extend(_names(tmp_path))
            old = next(tmp_path.glob(".d.old-*"), tmp_path)
            seen.append((old / "d" / "export.json").is_file())
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", watched)
    export.export(items, "pairs", out, writers=["jsonl"], overwrite=True, test_fraction=0.5)
    assert len(seen) == 3 and seen[0].startswith(".d.old-") and seen[1].startswith(".d.tmp-") and seen[2] is True
    assert _names(tmp_path) == ["d"] and "test.jsonl" in _names(out)


def test_an_earlier_export_comes_back_when_the_new_one_cannot_move_into_place(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "d"
    items = StandInStore([ranked(f"p{i}") for i in range(4)])
    export.export(items, "pairs", out, writers=["jsonl"])
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    rename = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if Path(target) == out and self.parent == tmp_path:
            raise OSError(18, "Invalid cross-device link")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(ConfigError) as error:
        export.export(items, "pairs", out, writers=["jsonl"], overwrite=True, test_fraction=0.5)
    assert str(error.value) == f"export folder {out}: could not write it (Invalid cross-device link); nothing changed"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier and _names(tmp_path) == ["d"]


def test_a_leftover_the_file_system_will_not_remove_never_hides_the_outcome(tmp_path: Path, monkeypatch) -> None:
    """A temporary folder whose removal fails (simulated): a failed export still raises its own error, an
    overwrite that finished still finishes; the leftover stays beside the folder under its dot-name."""
    rmdir = os.rmdir

    def refusing(path: str, *args: object, **kwargs: object) -> None:
        if Path(path).name.startswith((".d.tmp-", ".d.old-")):
            raise PermissionError(13, "Permission denied", str(path))
        rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", refusing)
    out = tmp_path / "d"

    def broken(folder: Path) -> None:
        (folder / "half.jsonl").write_text("{")
        raise ValueError("the writer's own error")

    with pytest.raises(ValueError, match=r"^the writer's own error$"):
        export.write_folder(out, broken, overwrite=False)
    assert not out.exists() and [n[:7] for n in _names(tmp_path)] == [".d.tmp-"]
    items = StandInStore([ranked(f"p{i}") for i in range(4)])
    export.export(items, "pairs", out, writers=["jsonl"])
    export.export(items, "pairs", out, writers=["jsonl"], overwrite=True, test_fraction=0.5)
    assert "test.jsonl" in _names(out)
    assert sorted(n[:7] for n in _names(tmp_path)) == [".d.old-", ".d.tmp-", "d"]
