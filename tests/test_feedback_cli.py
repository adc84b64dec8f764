"""`rlhf feedback` commands: import with file/line/field errors, generate on the tiny model, admin commands."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import run_cli

from feedback import schema
from feedback.store import Store
from rlhf import candidates
from rlhf_core.errors import DataError


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_import_is_idempotent_and_bad_files_name_line_and_field_and_store_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    good = _write(
        tmp_path / "items.jsonl",
        [{"id": "a", "prompt": "What is 1 plus 1?", "candidates": ["2.", {"text": "3.", "model": "m"}]}],
    )
    run_cli("feedback", "import", "--db", db, "--file", str(good))
    run_cli("feedback", "import", "--db", db, "--file", str(good))
    [item] = Store(db).records()
    assert [c.text for c in item.candidates] == ["2.", "3."]
    bad = _write(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok", "candidates": ["x"]},
            {"prompt": "q", "candidates": [{"txt": "typo"}]},
            {"prompt": [{"role": "robot", "content": "x"}]},
        ],
    )
    result = subprocess.run(
        [sys.executable, "-m", "rlhf", "feedback", "import", "--db", db, "--file", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.jsonl: line 3: 'prompt'[0]: role 'robot'" in result.stderr
    broken = _write(tmp_path / "broken.jsonl", ['{"prompt": "x"}', "{not json"])
    result = subprocess.run(
        [sys.executable, "-m", "rlhf", "feedback", "import", "--db", db, "--file", str(broken)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "broken.jsonl: line 2: not valid JSON" in result.stderr
    assert len(Store(db).records()) == 1  # nothing from the bad files


def test_candidate_errors_name_the_row_and_field(tmp_path: Path) -> None:
    from feedback import importer

    bad = _write(tmp_path / "c.jsonl", [{"prompt": "q", "candidates": [{"txt": "typo"}]}])
    store = Store.create(f"sqlite:///{tmp_path / 'f.db'}")
    with pytest.raises(DataError, match=r"c.jsonl: line 1: 'candidates'\[0\]: unknown key\(s\) \['txt'\]"):
        importer.import_file(store, str(bad))


def test_generate_samples_k_candidates_per_prompt_from_the_tiny_model(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    prompts = _write(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "What is 3 plus 4?"},
            {"prompt": [{"role": "user", "content": "What is 9 minus 2?"}]},
            {"prompt": "Add 1 and 2, please."},
        ],
    )
    run_cli(
        "feedback",
        "generate",
        "--db",
        db,
        "--model",
        "builtin:tiny",
        "--prompts",
        str(prompts),
        "--num-candidates",
        "4",
        "--max-new-tokens",
        "32",
        "--temperature",
        "1.2",
        "--batch-size",
        "2",
        "--seed",
        "3",
    )
    items = Store(db).records()
    assert len(items) == 3
    for item in items:
        assert 2 <= len(item.candidates) <= 4 and all(c.text.strip() for c in item.candidates)
        assert all(c.model == "builtin:tiny" for c in item.candidates)
        assert all("<|im_end|>" not in c.text and "<|im_start|>" not in c.text for c in item.candidates)
    with Store(db).engine.connect() as connection:
        generation, adapter = connection.exec_driver_sql("SELECT generation, adapter FROM candidates LIMIT 1").one()
    assert json.loads(generation) == {
        "num_candidates": 4,
        "temperature": 1.2,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 32,
        "seed": 3,
    }
    assert adapter is None


def test_generate_with_an_sft_adapter(tmp_path: Path, tiny_sft_run: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "What is 3 plus 4?"}])
    run_cli(
        "feedback",
        "generate",
        "--db",
        db,
        "--model",
        "builtin:tiny",
        "--adapter",
        str(tiny_sft_run),
        "--prompts",
        str(prompts),
        "--num-candidates",
        "3",
        "--max-new-tokens",
        "32",
    )
    [item] = Store(db).records()
    assert item.candidates
    with Store(db).engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT DISTINCT adapter FROM candidates").scalars().all() == [
            str(tiny_sft_run)
        ]


def test_generate_refuses_a_folder_that_is_no_policy_adapter_in_one_line(tmp_path: Path, capsys) -> None:
    """A missing or merged-model folder, or a reward model's (SEQ_CLS) LoRA: named before any model loads."""
    from rlhf import feedback_cli

    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "What is 3 plus 4?"}])
    reward = tmp_path / "reward"
    reward.mkdir()
    (reward / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4}))
    for adapter, message in (
        (tmp_path / "nowhere", "no adapter_config.json; name a LoRA adapter folder"),
        (reward, "is a SEQ_CLS adapter (a reward model's)"),
    ):
        argv = ["generate", "--db", db, "--model", "builtin:tiny", "--adapter", str(adapter), "--prompts", str(prompts)]
        with pytest.raises(SystemExit) as exit_info:
            feedback_cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("rlhf feedback generate: error: adapter: ") and message in err


def test_admin_commands(tmp_path: Path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    run_cli("feedback", "annotators", "add", "root", "--role", "admin", "--db", db)
    token = capsys.readouterr().out.strip().splitlines()[-1]
    store = Store(db)
    assert store.authenticate(token).is_admin
    guidelines = tmp_path / "g.md"
    guidelines.write_text("# Rate carefully\n")
    run_cli("feedback", "settings", "--db", db, "--overlap", "3", "--mode", "thumbs", "--guidelines", str(guidelines))
    assert json.loads(capsys.readouterr().out)["overlap"] == 3
    assert store.settings().guidelines == "# Rate carefully\n"
    run_cli("feedback", "progress", "--db", db, "--json")
    assert json.loads(capsys.readouterr().out)["annotators"][0]["name"] == "root"
    run_cli("feedback", "agreement", "--db", db)
    assert "thumbs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run_cli("feedback", "annotators", "add", "root", "--db", db)
    assert exit_info.value.code == 2 and "exists already" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(
            "feedback",
            "export",
            "--db",
            str(tmp_path / "missing.db"),
            "--format",
            "pairs",
            "--out",
            str(tmp_path / "o"),
        )
    assert "rlhf feedback migrate" in capsys.readouterr().err


def test_generate_skips_prompts_already_handed_out_or_answered(store: Store, monkeypatch, capsys) -> None:
    """Candidates added after annotators ranked an item would be missing from their rankings."""
    store.import_items([{"prompt": f"What is {i} plus {i}?", "id": f"g{i}"} for i in range(3)])
    store.add_candidates(1, ["one", "two"])
    store.add_annotator("a")
    a = store.annotator("a")
    item = store.next_item(a.id)
    assert item is not None and item.prompt_id == 1
    store.submit_ranking(a.id, 1, {c["id"]: 1 for c in item.candidates}, client_id="ranked-before")
    monkeypatch.setattr(candidates, "load", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        candidates, "sample_sets", lambda _sampler, prompts, k, reference: [["fresh A", "fresh B"] for _ in prompts]
    )
    report = candidates.generate(store, "builtin:tiny", settings=candidates.GenerationSettings(num_candidates=2))
    assert (report.prompts, report.skipped_in_use, report.stored) == (3, 1, 4)
    items = store.records()
    assert [c.text for c in items[0].candidates] == ["one", "two"]  # the ranked item is left as it was
    assert [len(x.candidates) for x in items[1:]] == [2, 2]
    rerun = candidates.generate(store, "builtin:tiny", settings=candidates.GenerationSettings(num_candidates=2))
    assert rerun.skipped_in_use == 1 and rerun.stored == 4  # the same samples again: existing ids, nothing new
    assert [len(x.candidates) for x in store.records()] == [2, 2, 2]


GOOD_ROW = {"id": "ok-1", "prompt": "What is 1 plus 1?", "candidates": ["2."]}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"id": "x" * 201, "prompt": "q"}, "'id': 201 characters, at most 200"),
        ({"id": 2**70, "prompt": "q", "candidates": ["a"]}, None),  # a big number is a fine id (stored as text)
        ({"id": 1.5, "prompt": "q"}, "'id': expected text or a whole number"),
        ({"id": "nul\u0000id", "prompt": "q"}, "'id': contains a NUL"),
        ({"prompt": "what\u0000 now?"}, "'prompt': contains a NUL"),
        ({"prompt": [{"role": "user", "content": "a\u0000b"}]}, "'prompt'[0].content: contains a NUL"),
        ({"prompt": "q", "candidates": ["fine", "bad\u0000"]}, "'candidates'[1]: contains a NUL"),
        ({"prompt": "q", "candidates": ["x" * 100_001]}, "'candidates'[0]: 100001 characters"),
        ({"prompt": "q", "candidates": [{"text": "a", "model": 7}]}, "'candidates'[0].model: expected text"),
        ({"prompt": "q", "candidates": [{"text": "a", "model": "m" * 501}]}, "'candidates'[0].model: 501 characters"),
        ({"prompt": "q", "candidates": [{"text": "a", "run_id": "not-a-run"}]}, "'candidates'[0].run_id: expected"),
        (
            {"prompt": "q", "candidates": [{"text": "a", "generation": {"k": "\u0000"}}]},
            "'candidates'[0].generation: contains a NUL",
        ),
        ({"prompt": "q", "candidates": ["a"] * 101}, "'candidates': expected a list of at most 100"),
        ({"id": "q\ud800", "prompt": "q"}, "'id': holds U+D800 at character 1, which UTF-8 cannot encode"),
        ({"prompt": [{"role": "user", "content": "\udfff"}]}, "'prompt'[0].content: holds U+DFFF"),
        ({"prompt": "q", "candidates": ["ok", "bad \ud800"]}, "'candidates'[1]: holds U+D800 at character 4"),
        ({"prompt": "q", "candidates": [{"text": "a", "adapter": "\ud800"}]}, "'candidates'[0].adapter: holds U+D800"),
        (
            {"prompt": "q", "candidates": [{"text": "a", "generation": {"stop": ["\ud800"]}}]},
            "'candidates'[0].generation.stop[0]: holds U+D800",
        ),
    ],
)
def test_import_checks_types_and_lengths_per_row_on_both_backends(store: Store, tmp_path: Path, row, field) -> None:
    from feedback import importer

    path = _write(tmp_path / "items.jsonl", [GOOD_ROW, row])
    if field is None:
        assert importer.import_file(store, str(path)).prompts_added == 2
        return
    with pytest.raises(DataError) as error:
        importer.import_file(store, str(path))
    assert "items.jsonl: line 2: " + field in str(error.value)
    assert store.records() == []  # all or nothing: the good first row is not stored either


def test_commands_refuse_unencodable_options_and_files_naming_them(tmp_path: Path, capsys, monkeypatch) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    refused = [
        (["annotators", "add", "bad\udcff"], "NAME: holds U+DCFF at character 3"),
        (["generate", "--model", "m\udcff", "--prompts", "p.jsonl"], "--model: holds U+DCFF"),
        (["generate", "--model", "m", "--langsmith-project", "\udcff"], "--langsmith-project: holds U+DCFF"),
        (["import", "--langsmith-project", "p\udcff"], "--langsmith-project: holds U+DCFF"),
        (
            [
                "import",
                "--file",
                str(_write(tmp_path / "items.jsonl", [GOOD_ROW, {"prompt": "q", "candidates": ["\ud800"]}])),
            ],
            "items.jsonl: line 2: 'candidates'[0]: holds U+D800",
        ),
    ]
    bad_bytes = tmp_path / "g.md"
    bad_bytes.write_bytes(b"# Rules \xff\n")
    refused.append((["settings", "--guidelines", str(bad_bytes)], "g.md: byte 8 is not UTF-8"))
    for argv, message in refused:
        with pytest.raises(SystemExit) as exit_info:
            run_cli("feedback", *argv, "--db", db)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert Store(db).records() == [] and Store(db).annotators() == []
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(SystemExit):
        run_cli("feedback", "annotators", "add", "bob", "--password-stdin", "--db", db)
    assert "password: at least 8 characters" in capsys.readouterr().err


def test_doctor_lists_stored_rows_whose_text_utf8_cannot_encode(store: Store, capsys) -> None:
    [pid] = store.add_prompts(["What is 2 plus 2?"])
    store.add_candidates(pid, ["4.", "Four."])
    run_cli("feedback", "doctor", "--db", store.url)
    assert "every stored text encodes as UTF-8" in capsys.readouterr().out
    with store.engine.begin() as connection:  # as rows stored before the checks existed
        connection.execute(sa.insert(schema.settings).values(key="guidelines", value="\ud800"))
        connection.execute(
            sa.update(schema.candidates).where(schema.candidates.c.id == 2).values(generation={"k": "\udc00"})
        )
        if store.backend == "sqlite":  # bytes another tool wrote: not UTF-8 at all
            connection.exec_driver_sql("UPDATE candidates SET text = CAST(x'4f6bff' AS TEXT) WHERE id = 1")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("feedback", "doctor", "--db", store.url)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and f"{3 if store.backend == 'sqlite' else 2} stored value(s)" in err
    assert "candidates\trow 2\tgeneration\tvalue.k: holds U+DC00" in out
    assert "settings\trow guidelines\tvalue\tvalue: holds U+D800" in out
    if store.backend == "sqlite":
        assert "candidates\trow 1\ttext\tbyte 2 is not UTF-8" in out


def test_every_command_answers_bad_input_in_one_line_without_a_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    """Each `rlhf feedback` command, given input a clumsy user gives: exit status 2 and one line naming the fix."""
    from rlhf import feedback_cli

    db = f"sqlite:///{tmp_path / 'f.db'}"
    run_cli("feedback", "migrate", "--db", db)
    run_cli("feedback", "annotators", "add", "root", "--role", "admin", "--db", db)
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "train.jsonl").write_text("{}\n")
    latin1 = tmp_path / "s.csv"
    latin1.write_bytes(b'prompt,candidates\n"caf\xe9 au lait?","[]"\n')
    (tmp_path / "x.parquet").write_text("not parquet")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"}\n{not json\n')
    (tmp_path / "g.md").write_bytes(b"# Rules \xff\n")
    nowhere = "postgresql://postgres@127.0.0.1:1/none"
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.delenv("LANGCHAIN_API_KEY", raising=False)
    cases = [
        (["migrate", "--db", str(folder)], "unable to open database file"),
        (["migrate", "--db", str(tmp_path / "no" / "such" / "f.db")], "No such file or directory"),
        (["migrate", "--db", nowhere], "Connection refused"),
        (["migrate", "--db", "nosuchdb://x"], "--db:"),
        (["serve", "--db", str(folder)], "unable to open database file"),
        (["serve", "--db", db, "--trusted-proxies", "proxy.example.com"], "not an IP address or network"),
        (["serve", "--db", db, "--hash-memory-mib", "0"], "at least 1"),
        (["annotators", "add", "eve\nroot\tadmin\tactive", "--db", db], "U+000A at character 3"),
        (["annotators", "add", "ＲＯＯＴ", "--db", db], "an annotator named 'root' exists already"),
        (["annotators", "token", "nobody", "--db", db], "no annotator named 'nobody'"),
        (["annotators", "rename", "root", "--db", db], "--to NEW"),
        (["annotators", "password", "root", "--db", db], "--password"),
        (["annotators", "list", "--db", str(tmp_path / "empty.db")], "rlhf feedback migrate"),
        (["import", "--file", str(latin1), "--db", db], "s.csv: line 2: byte 5 of the line is not UTF-8"),
        (["import", "--file", str(tmp_path / "x.parquet"), "--db", db], "x.parquet: cannot read it as parquet"),
        (["import", "--file", str(tmp_path / "missing.jsonl"), "--db", db], "missing.jsonl: no such file"),
        (["import", "--file", str(tmp_path / "broken.jsonl"), "--db", db], "broken.jsonl: line 2: not valid JSON"),
        (["generate", "--model", "builtin:tiny", "--prompts", str(tmp_path / "missing.jsonl"), "--db", db], "missing"),
        (["export", "--format", "pairs", "--out", str(a_file), "--db", db], "exists and is not a folder"),
        (["export", "--format", "pairs", "--out", "/proc/rlhf-export", "--db", db], "cannot create it"),
        (["export", "--format", "pairs", "--out", str(tmp_path / "export"), "--db", db], "not empty"),
        (["export", "--format", "pairs", "--out", str(tmp_path / "e"), "--test-fraction", "1", "--db", db], "share"),
        (["progress", "--db", str(folder)], "unable to open database file"),
        (["agreement", "--db", nowhere], "Connection refused"),
        (["settings", "--guidelines", str(tmp_path / "missing.md"), "--db", db], "missing.md: No such file"),
        (["settings", "--guidelines", str(folder), "--db", db], "Is a directory"),
        (["settings", "--guidelines", str(tmp_path / "g.md"), "--db", db], "g.md: byte 8 is not UTF-8"),
        (["settings", "--overlap", "0", "--db", db], "overlap: must be between 1 and 10000"),
        (["sync", "--db", db], "LangSmith is not configured"),
        (["doctor", "--db", str(folder)], "unable to open database file"),
    ]
    commands = {argv[0] for argv, _ in cases}
    assert commands == set(feedback_cli.cli.make_parser([feedback_cli.add_generate])._actions[-1].choices)
    for argv, message in cases:
        try:
            feedback_cli.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        else:
            code = 0
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert code == 2 and "Traceback" not in err, (argv, err)
        assert last.startswith(f"rlhf feedback {argv[0]}: error: ") and message in last, (argv, err)
    assert Store(db).records() == [] and [a.name for a in Store(db).annotators()] == ["root"]
