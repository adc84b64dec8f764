"""Run folders record where their inputs are so that they work from any directory and after being moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, run_cli

from rlhf import report, runs
from rlhf.arguments import DataArguments, ModelArguments
from rlhf.config import write_resolved_config
from rlhf.ppo.config import PPOConfig
from rlhf.results import EvalResult, ExportResult, PPOResult, read_stage
from rlhf.run_paths import read_run_config, relocate
from rlhf.stages import pipeline


def _tree(root: Path, *folders: str) -> None:
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)


def test_a_path_inside_the_moved_tree_is_read_at_its_new_place_and_one_outside_as_recorded(tmp_path: Path) -> None:
    old, new = tmp_path / "a" / "runs" / "tiny", tmp_path / "b" / "moved" / "tiny"
    _tree(new, "ppo", "sft/merged")
    _tree(tmp_path, "models/base")
    ppo_then, ppo_now = str(old / "ppo"), new / "ppo"
    # the tree moved (runs/ -> moved/ under another folder): what was inside it is found where it is now
    assert relocate(str(old / "sft" / "merged"), ppo_then, ppo_now) == str(new / "sft" / "merged")
    # a base model outside the tree, a hub id and a relative path (an older run folder) are read as recorded
    outside = str(tmp_path / "models" / "base")
    assert relocate(outside, ppo_then, ppo_now) == outside
    assert relocate("Qwen/Qwen2.5-0.5B-Instruct", ppo_then, ppo_now) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert relocate("runs/tiny/sft/merged", ppo_then, ppo_now) == "runs/tiny/sft/merged"
    # the folder alone was copied elsewhere, its inputs stayed: they are read where they still are
    _tree(old, "sft/merged")
    alone = tmp_path / "elsewhere" / "ppo"
    alone.mkdir(parents=True)
    assert relocate(str(old / "sft" / "merged"), ppo_then, alone) == str(old / "sft" / "merged")
    # the whole tree copied (both places exist): the copy reads its own inputs
    assert relocate(str(old / "sft" / "merged"), ppo_then, ppo_now) == str(new / "sft" / "merged")
    # not moved: as recorded
    assert relocate(str(old / "sft" / "merged"), ppo_then, old / "ppo") == str(old / "sft" / "merged")


def test_configs_and_results_record_absolute_paths_that_follow_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reward run started with relative paths records them absolute; after the tree moves, the readers
    (every stage's, eval's, export's, the report's) find the inputs where they are now."""
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path, "a/runs/t/sft/merged", "a/runs/t/reward", "a/runs/t/preferences", "a/runs/t/eval")
    model = ModelArguments(model_name_or_path="a/runs/t/sft/merged")
    data = DataArguments(dataset_name="a/runs/t/preferences")
    config = PPOConfig(output_dir="a/runs/t/reward", reward_model_path=None)
    write_resolved_config(Path("a/runs/t/reward") / runs.CONFIG_FILE, "reward", model, data, config)
    recorded = yaml.safe_load((tmp_path / "a/runs/t/reward" / runs.CONFIG_FILE).read_text())
    assert recorded["model_name_or_path"] == str(tmp_path / "a/runs/t/sft/merged")
    assert recorded["output_dir"] == str(tmp_path / "a/runs/t/reward")
    assert recorded["dataset_name"] == str(tmp_path / "a/runs/t/preferences")
    assert recorded["gold_judge"] is None and recorded["lr_scheduler_type"] == "constant"  # only paths change
    evaluated = EvalResult.from_json(
        {**_evaluation(), "output_dir": "a/runs/t/eval", "ppo_dir": "a/runs/t/reward", "prompts_dataset": "builtin:x"}
    )
    evaluated.write("a/runs/t/eval")
    assert json.loads((tmp_path / "a/runs/t/eval/metrics.json").read_text())["ppo_dir"] == str(
        tmp_path / "a/runs/t/reward"
    )

    shutil.move(tmp_path / "a", tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    options = read_run_config("../b/runs/t/reward")
    assert options["model_name_or_path"] == str(tmp_path / "b/runs/t/sft/merged")
    assert options["dataset_name"] == str(tmp_path / "b/runs/t/preferences")
    assert runs.read_config("../b/runs/t/reward") == options  # every reader goes through the one helper
    again = EvalResult.read("../b/runs/t/eval")
    assert again.ppo_dir == str(tmp_path / "b/runs/t/reward") and again.prompts_dataset == "builtin:x"
    assert read_stage("../b/runs/t/eval") == again


def _figures(result: EvalResult | ExportResult) -> object:
    """A result's figures, rounded to 6 decimals, without where it was written or how long it took."""

    def rounded(value: object) -> object:
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return [rounded(v) for v in value] if isinstance(value, list) else value

    paths = {*type(result).path_fields(), "runtime_seconds"}
    figures = {k: v for k, v in result.to_json().items() if k not in paths}
    if isinstance(figures.get("reward_model"), dict):  # the preference data it was measured on: a path
        figures["reward_model"].pop("dataset")
    return rounded(figures)


def _evaluation() -> dict[str, object]:
    scores = {"reward": 1.0, "reward_stderr": 0.1, "length": 9.0, "length_stderr": 0.5, "eos_rate": 1.0}
    return {"sft": scores, "ppo": scores, "kl_ppo_to_sft": 0.5, "prompts": 2, "seeds": [0], "win_rate": {}}


QUICK = [
    *("--sft.max_steps", "20", "--sft.eval_steps", "10", "--sft.save_steps", "10"),
    *("--reward.max_steps", "20", "--reward.eval_strategy", "no", "--reward.save_steps", "10"),
    *("--ppo.steps", "4", "--ppo.save_steps", "2", "--ppo.rollout_batch_size", "32"),
    *("--annotation_prompts", "40", "--eval_seeds", "0"),
]


@pytest.mark.slow
def test_a_moved_pipeline_run_is_evaluated_exported_and_reported_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline run made with relative paths, then moved as a whole: PPO started elsewhere on its SFT and
    reward models runs, and eval, export and report work from another folder, with the same figures."""
    monkeypatch.chdir(tmp_path)
    pipeline.main(["--recipe", str(RECIPES / "tiny"), "--output_dir", "a/run", "--disable_tqdm", "true", *QUICK])
    before_eval = EvalResult.read("a/run/eval")
    before_export = ExportResult.read("a/run/export")
    before_page = (tmp_path / "a/run/report.html").read_text()
    assert json.loads((tmp_path / "a/run/report/done.json").read_text())["report"] == "report.html"

    shutil.move(tmp_path / "a", tmp_path / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved = tmp_path / "b" / "run"
    # the case: PPO with absolute paths to the moved SFT and reward models (the reward run's config
    # names the SFT model it was trained on, which PPO checks against its own base)
    ppo_args = ["--config", str(RECIPES / "tiny" / "ppo.yaml"), "--model_name_or_path", str(moved / "sft" / "merged")]
    ppo_args += ["--reward_model_path", str(moved / "reward"), "--output_dir", "ppo-again", "--steps", "1"]
    ppo_args += ["--rollout_batch_size", "16", "--mini_batch_size", "8", "--eval_max_prompts", "0"]
    run_cli("ppo", *ppo_args, "--disable_tqdm", "true")
    assert PPOResult.read("ppo-again").steps == 1
    for adapter in ("ppo-again", "ppo-again/value"):  # the critic started from the moved reward model's adapter
        config = json.loads((elsewhere / adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(moved / "sft" / "merged"), adapter

    run_cli("eval", "--run_dir", "../b/run/ppo", "--output_dir", "eval", "--seeds", "0", "--disable_tqdm", "true")
    after_eval = EvalResult.read("eval")
    assert after_eval.ppo_dir == EvalResult.read(moved / "eval").ppo_dir == str(moved / "ppo")
    assert before_eval.reward_model is not None and before_eval.win_rate
    assert after_eval.reward_model is not None and after_eval.reward_model.dataset == str(moved / "preferences")
    assert _figures(after_eval) == _figures(before_eval)

    run_cli("export", "--run_dir", "../b/run/ppo", "--output_dir", "export", "--eval_dir", "eval")
    after_export = ExportResult.read("export")
    assert after_export.base == str(moved / "sft" / "merged") and before_export.full_precision is not None
    assert _figures(after_export) == _figures(before_export)
    adapter = json.loads((elsewhere / "export" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(moved / "sft" / "merged")
    card = (elsewhere / "export" / "README.md").read_text()
    assert f"`rlhf sft` run `{moved / 'sft'}`" in card and f"{tmp_path / 'a'}/" not in card

    page = report.build_report("../b/run").read_text()
    verdict = before_page.split("<div class='verdict ", 1)[1].split("</div>", 1)[0]
    assert verdict in page and "<h2>Hyperparameters</h2>" in page
    assert "<code>model_name_or_path</code>&nbsp;sft/merged" in page  # read where it is now, shown inside the run
