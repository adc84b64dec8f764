"""`rlhf dpo` and `rlhf kto`: TRL's trainers on the one QLoRA base, fed by the feedback app's exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES, run_cli
from feedback_fixtures import annotate_all, tiny_items
from peft import PeftModel
from transformers import AutoModelForCausalLM

from feedback.store import Store
from rlhf.arguments import StageConfig
from rlhf.config import parse
from rlhf.results import EvalResult, OfflineResult
from rlhf.stages import dpo, evaluate, kto, offline
from rlhf_core.errors import ConfigError, DataError

TINY_JUDGE = "rlhf.tiny.task:score"


def _config(module, out: Path, *overrides: str) -> StageConfig:
    stage = module.METHOD.stage
    argv = ["--config", str(RECIPES / "tiny" / f"{stage}.yaml"), "--output_dir", str(out), *overrides]
    return StageConfig(*parse(module.CONFIG_TYPES, [*argv, "--disable_tqdm", "true"], prog="t", description=""))


def test_kto_weights_balance_the_labels_unless_given() -> None:
    assert kto.balanced_weights(100, 300, None, None) == (3.0, 1.0)
    assert kto.balanced_weights(300, 100, None, None) == (1.0, 3.0)
    assert kto.balanced_weights(300, 100, 2.0, None) == (2.0, 6.0)  # one given: the other balances it
    assert kto.balanced_weights(300, 100, None, 1.5) == (0.5, 1.5)
    assert kto.balanced_weights(300, 100, 1.0, 1.0) == (1.0, 1.0)  # both given: the recipe's
    with pytest.raises(DataError, match="both labels"):
        kto.balanced_weights(0, 10, None, None)


def test_the_other_export_format_is_refused_with_the_one_to_use(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"builtin:tiny/pairs\[train\]: this is preference-pair data.*--format kto"):
        kto.main(["--config", str(RECIPES / "tiny" / "kto.yaml"), "--dataset_name", "builtin:tiny/pairs"])
    with pytest.raises(DataError, match=r"this is thumbs data .*`rlhf feedback export --format pairs`"):
        dpo.main(["--config", str(RECIPES / "tiny" / "dpo.yaml"), "--dataset_name", "builtin:tiny/thumbs"])
    tied = tmp_path / "tied.jsonl"
    answer = [{"role": "assistant", "content": "7"}]
    tied.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "3 plus 4?"}], "chosen": answer, "rejected": answer})
    )
    with pytest.raises(DataError, match=r"tied.jsonl: line 1: 'chosen': identical to 'rejected'"):
        dpo.main(["--config", str(RECIPES / "tiny" / "dpo.yaml"), "--dataset_name", str(tied)])


def test_the_reference_is_the_sft_model_with_the_adapter_disabled(tiny_sft_run: Path, tmp_path: Path) -> None:
    """No second model in memory: TRL's reference for a PEFT policy and no ref_model is the adapter switched off."""
    config = _config(dpo, tmp_path, "--model_name_or_path", str(tiny_sft_run / "merged"), "--max_steps", "2")
    trainer, reports, labels = offline.build(dpo.METHOD, config.model, config.data, config.training)
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert labels is None and reports["train"].rows == 1200 and reports["train"].dropped == 0
    quantized = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "the SFT model is loaded 4-bit, as the reward and PPO stages load it"
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_offline_stage_trains_on_the_feedback_apps_export(method: str, tiny_sft_run: Path, tmp_path: Path) -> None:
    """Rankings exported as pairs train `rlhf dpo`; thumbs exported for KTO train `rlhf kto`, labels balanced."""
    store = Store.create(f"sqlite:///{tmp_path / 'f.db'}")
    mode = "ranking" if method == "dpo" else "thumbs"
    store.update_settings(mode=mode)
    store.import_items(tiny_items(40))
    store.add_annotator("gold")
    assert annotate_all(store, store.annotator("gold").id, mode=mode) == 40
    export = tmp_path / "export"
    fmt = "pairs" if method == "dpo" else "kto"
    run_cli("feedback", "export", "--db", store.url, "--format", fmt, "--out", str(export), "--test-fraction", "0.2")
    rows = [json.loads(line) for line in (export / "train.jsonl").read_text().splitlines()]

    module = dpo if method == "dpo" else kto
    out = tmp_path / method
    overrides = ["--model_name_or_path", str(tiny_sft_run / "merged"), "--dataset_name", str(export)]
    overrides += ["--max_train_samples", "1000", "--max_steps", "2", "--per_device_train_batch_size", "8"]
    result = module.run(_config(module, out, *overrides, "--logging_steps", "1", "--eval_steps", "2"))
    assert result == OfflineResult.read(out) and result.stage == method
    assert result.global_steps == 2 and result.train_rows == len(rows)
    assert {"chosen", "rejected", "margins"} <= set(result.eval_rewards)
    assert result.rewards  # TRL's implicit-reward metrics, logged every step here
    if method == "kto":
        ups = sum(row["label"] for row in rows)
        assert result.labels is not None and (result.labels.desirable, result.labels.undesirable) == (
            ups,
            len(rows) - ups,
        )
        weighted = result.labels.desirable * result.labels.desirable_weight
        assert weighted == pytest.approx(result.labels.undesirable * result.labels.undesirable_weight)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_sft_run / "merged"), str(out))
    assert sum(float(p.abs().sum()) for n, p in policy.named_parameters() if "lora_B" in n) > 0  # it learned


def test_rlhf_eval_judges_a_dpo_adapter_as_it_judges_a_ppo_one(
    tiny_sft_run: Path, tiny_reward_run: Path, tmp_path: Path
) -> None:
    """Same sampler, judges and reward model; the reference is the SFT model with the DPO adapter disabled."""
    out = tmp_path / "dpo"
    overrides = ["--model_name_or_path", str(tiny_sft_run / "merged"), "--max_steps", "3"]
    dpo.run(_config(dpo, out, *overrides, "--max_train_samples", "96", "--eval_strategy", "no"))
    config = evaluate.EvalConfig(run_dir=str(out), max_prompts=8, seeds=[0], disable_tqdm=True)
    with pytest.raises(ConfigError, match="prompts: a dpo run was trained on preferences"):
        evaluate.run(config)
    config.prompts = "builtin:tiny/prompts"
    with pytest.raises(ConfigError, match="reward_model_path: the dpo run"):
        evaluate.run(config)
    config.reward_model_path, config.gold_judge, config.max_new_tokens = str(tiny_reward_run), TINY_JUDGE, 24
    result = evaluate.run(config)
    assert result == EvalResult.read(tmp_path / "eval") and result.prompts == 8
    assert result.ppo.gold is not None and {"gold", "reward"} <= set(result.win_rate) and result.kl_ppo_to_sft > 0
    assert result.reward_model is not None  # the reward run's held-out pairs, scored through the shared base
    samples = [json.loads(line) for line in (tmp_path / "eval" / evaluate.SAMPLES_FILE).read_text().splitlines()]
    assert max(s["length"] for s in samples) <= 24
