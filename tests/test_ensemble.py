"""Reward-model ensembles: aggregation by hand, the folder format, training K members, PPO on them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, ppo_args
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from rlhf import ensemble
from rlhf.arguments import StageConfig
from rlhf.config import parse
from rlhf.results import RewardResult
from rlhf.stages import ppo, reward
from rlhf_core.errors import ConfigError


def test_aggregations_by_hand() -> None:
    # two answers scored by three members (already standardised)
    scores = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])
    assert ensemble.aggregate(scores, "mean").tolist() == pytest.approx([2.0, 1.0])
    # population variance: answer 1: ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3; answer 2: (1 + 1 + 4) / 3 = 2
    assert ensemble.aggregate(scores, "uwo", uwo_coef=0.5).tolist() == pytest.approx([2 - 1 / 3, 1 - 1.0])
    assert ensemble.aggregate(scores, "wco").tolist() == pytest.approx([1.0, 0.0])
    assert ensemble.disagreement(scores).tolist() == pytest.approx([math.sqrt(2 / 3), math.sqrt(2)])
    one = torch.tensor([[0.3, -1.2]])  # one reward model: every aggregation is its own score
    for how in ensemble.AGGREGATIONS:
        assert ensemble.aggregate(one, how).tolist() == pytest.approx([0.3, -1.2])
    with pytest.raises(ValueError, match="reward_aggregation"):
        ensemble.aggregate(scores, "max")


def test_standardise_puts_each_member_on_its_own_scale() -> None:
    scales = [ensemble.Member("a", mean=1.0, std=2.0), ensemble.Member("b", mean=-1.0, std=0.5)]
    scores = torch.tensor([[3.0, 1.0], [-0.5, -1.0]])
    assert ensemble.standardise(scores, scales).tolist() == [pytest.approx([1.0, 0.0]), pytest.approx([1.0, 0.0])]


def test_manifest_round_trip_and_bad_manifests(tmp_path: Path) -> None:
    for name in ("member-0", "member-1"):
        (tmp_path / name).mkdir()
    listed = [ensemble.Member(str(tmp_path / "member-0"), 0.5, 2.0), ensemble.Member(str(tmp_path / "member-1"))]
    ensemble.write_manifest(tmp_path, listed)
    assert json.loads((tmp_path / ensemble.MANIFEST).read_text())["members"][0]["path"] == "member-0"  # relative
    assert ensemble.members(tmp_path) == listed
    single = tmp_path / "single"
    single.mkdir()
    assert ensemble.members(single) == [ensemble.Member(str(single))]  # one reward model: itself, unscaled
    (tmp_path / ensemble.MANIFEST).write_text(json.dumps({"members": [{"path": "gone", "mean": 0, "std": 1}]}))
    with pytest.raises(ConfigError, match=r"member folder .*gone is missing"):
        ensemble.members(tmp_path)
    (tmp_path / ensemble.MANIFEST).write_text("{}")
    with pytest.raises(ConfigError, match="not an ensemble manifest"):
        ensemble.members(tmp_path)


def _reward_args(out: Path, sft_run: Path, *overrides: str) -> list[str]:
    return [
        "--config",
        str(RECIPES / "tiny" / "reward.yaml"),
        "--model_name_or_path",
        str(sft_run / "merged"),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "32",
        "--eval_strategy",
        "no",
        "--save_steps",
        "100",
        "--disable_tqdm",
        "true",
        *overrides,
    ]


def test_ensemble_size_below_one_is_refused(tiny_sft_run: Path, tmp_path: Path) -> None:
    config = StageConfig(
        *parse(
            reward.CONFIG_TYPES, _reward_args(tmp_path, tiny_sft_run, "--ensemble_size", "0"), prog="t", description=""
        )
    )
    with pytest.raises(ConfigError, match="ensemble_size: 0"):
        reward.run(config)


@pytest.mark.slow
def test_an_ensemble_trains_distinct_members_that_plain_peft_loads_and_ppo_combines(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reward"
    args = _reward_args(out, tiny_sft_run, "--ensemble_size", "2")
    result = reward.run(StageConfig(*parse(reward.CONFIG_TYPES, args, prog="t", description="")))
    assert result == RewardResult.read(out)
    assert result.ensemble is not None and result.ensemble.members == ["member-0", "member-1"]
    assert result.eval is not None and result.eval.pairs == 32 and result.ensemble.disagreement is not None
    members = ensemble.members(out)
    assert [Path(m.path).name for m in members] == ["member-0", "member-1"]
    assert all(m.std > 0 for m in members)
    # each member is a plain reward run: its seed differs and PEFT loads it as a sequence classifier
    heads = []
    for i, member in enumerate(members):
        assert RewardResult.read(member.path).eval is not None
        assert f"seed: {42 + i}" in (Path(member.path) / "rlhf_config.yaml").read_text()
        base = AutoModelForSequenceClassification.from_pretrained(tiny_sft_run / "merged", num_labels=1)
        heads.append(PeftModel.from_pretrained(base, member.path).base_model.model.score.modules_to_save.default.weight)
    assert not torch.equal(heads[0], heads[1])  # other seeds and resamples: other models

    # PPO on the ensemble: one reward adapter and head per member on the one base, members logged
    ppo_out = tmp_path / "ppo"
    ppo_out.mkdir()
    overrides = ("--reward_model_path", str(out), "--reward_aggregation", "uwo", "--steps", "1")
    history = ppo.build(
        *parse(ppo.CONFIG_TYPES, ppo_args(ppo_out, tiny_sft_run, tiny_reward_run, *overrides), prog="t", description="")
    ).train()
    metrics = history[-1]
    assert {"reward/member_0", "reward/member_1", "reward/ensemble_std"} <= set(metrics)
    assert metrics["reward/ensemble_std"] > 0


def test_a_single_reward_model_cannot_be_aggregated_conservatively(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    for how in ("uwo", "wco"):
        args = ppo_args(tmp_path, tiny_sft_run, tiny_reward_run, "--reward_aggregation", how)
        with pytest.raises(ConfigError, match=f"reward_aggregation: {how} combines the members of a reward ensemble"):
            ppo.build(*parse(ppo.CONFIG_TYPES, args, prog="t", description=""))
    with pytest.raises(ConfigError, match="uwo_coef"):
        parse(
            ppo.CONFIG_TYPES,
            ppo_args(tmp_path, tiny_sft_run, tiny_reward_run, "--uwo_coef", "-1"),
            prog="t",
            description="",
        )


def test_an_ensemble_member_trained_on_another_base_is_refused(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """Members must share PPO's base: one trained on another model is named with the option."""
    out = tmp_path / "reward"
    shutil.copytree(tiny_reward_run, out / "member-0")
    shutil.copytree(tiny_reward_run, out / "member-1")
    recorded = out / "member-1" / "rlhf_config.yaml"
    recorded.write_text(recorded.read_text().replace(str(tiny_sft_run / "merged"), "builtin:tiny"))
    ensemble.write_manifest(out, [ensemble.Member(str(out / f"member-{i}")) for i in range(2)])
    shutil.copy(tiny_reward_run / "rlhf_config.yaml", out / "rlhf_config.yaml")
    args = ppo_args(tmp_path / "ppo", tiny_sft_run, tiny_reward_run, "--reward_model_path", str(out))
    with pytest.raises(ConfigError, match="member-1 was trained on 'builtin:tiny'"):
        ppo.build(*parse(ppo.CONFIG_TYPES, args, prog="t", description=""))
