"""``rlhf pipeline --rounds``: iterated annotation of the current policy, with a budget and a selector."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pipeline import TINY

from rlhf.stages import pipeline, rounds
from rlhf_core.errors import ConfigError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rounds", "0"], "rounds: 0; the pipeline runs at least one round"),
        (["--rounds", "3", "--annotation_budget", "2"], r"annotation_budget: 2 rankings is smaller than one batch"),
        (["--rounds", "2", "--overlap", "2", "--annotation_budget", "9"], "not a multiple of overlap 2"),
        (["--rounds", "2", "--algorithm", "dpo"], "rounds: 2 with --algorithm dpo"),
        (["--rounds", "4", "--ppo.steps", "3"], r"--ppo.steps: 3 RL iterations cannot be split over 4 rounds"),
        (["--rounds", "2", "--selection_pool", "0.5"], "selection_pool: 0.5"),
        (["--rounds", "2", "--select", "margin"], "invalid choice: 'margin'"),
        (["--rounds", "2", "--select", "disagreement"], "select: disagreement compares a reward ensemble's members"),
    ],
)
def test_a_round_plan_that_cannot_work_is_refused_naming_the_option_before_anything_runs(
    tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises((ConfigError, SystemExit)) as error:
        pipeline.main(["--recipe", TINY, "--output_dir", str(out), *options])
    assert error.type is SystemExit or error.match(message)
    assert not out.exists()


def test_human_rounds_without_accounts_stop_before_training_and_the_budget_splits_evenly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = pipeline.PipelineConfig(recipe=TINY, output_dir=str(out), annotator="human", rounds=2)
    with pytest.raises(ConfigError, match=r"annotator: human, but the feedback store .* has no active accounts"):
        pipeline.Pipeline(config).run()
    assert not (out / "sft").exists()
    # unset budget: the one-round pipeline's (one ranking per distinct prompt among the first 1000), split in 3
    config = pipeline.PipelineConfig(recipe=TINY, output_dir=str(out), rounds=3, annotation_prompts=1000)
    planned = pipeline.Pipeline(config)
    assert planned.round_items == [184, 184, 184] and planned.round_steps == [17, 17, 16]
    assert rounds.split_evenly(10, 3) == [4, 3, 3]
    assert [f"{s}@{r}" for s, r in planned.plan()][:7] == [
        "sft@0", "generate@1", "annotate@1", "preferences@1", "reward@1", "ppo@1", "generate@2",
    ]  # fmt: skip
    assert planned.folder("ppo", 2) == out / "round-2" / "ppo" and planned.folder("eval") == out / "eval"
    one = pipeline.Pipeline(pipeline.PipelineConfig(recipe=TINY, output_dir=str(out)))
    assert one.round_items is None and one.folder("ppo", 1) == out / "ppo"  # one round: today's layout
    with pytest.raises(ConfigError, match="from_stage: reward of round 1 would leave later rounds' items"):
        planned.clear_from("reward")
