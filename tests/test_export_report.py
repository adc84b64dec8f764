"""Export (adapter, verified merge, model card) and the HTML report."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rlhf import merging, models, report, runs
from rlhf.arguments import ModelArguments
from rlhf.config import from_options
from rlhf.results import (
    Calibration,
    CalibrationBin,
    Diagnosis,
    Difference,
    Distribution,
    EvalResult,
    Evaluation,
    FullPrecisionLoad,
    MergeCheck,
    PairAccuracy,
    PolicyScores,
    PPOResult,
    RewardResult,
    SFTResult,
    WinRate,
)
from rlhf.stages import export


def _probe_logits(model: torch.nn.Module, tokenizer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs of each probe conversation (one at a time, no padding) and a mask of real tokens."""
    rows = [tokenizer.apply_chat_template(p, tokenize=True, return_dict=True)["input_ids"] for p in merging.PROBES]
    width = max(map(len, rows))
    out = torch.zeros(len(rows), width, model.config.vocab_size)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    with torch.no_grad():
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.log_softmax(model.eval()(torch.tensor([row])).logits[0].float(), -1)
            mask[i, : len(row)] = True
    return out, mask


def _greedy_answers(model: torch.nn.Module, tokenizer: object) -> list[list[int]]:
    answers = []
    for probe in merging.PROBES:
        prompt = tokenizer.apply_chat_template(probe[:1], add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = torch.tensor([prompt["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
        answers.append(out[0, ids.shape[1] :].tolist())
    return answers


def test_export_writes_adapter_merged_model_and_card(
    tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merged export is the model as trained: the 4-bit base + adapter, not full-precision base + adapter.
    The card's snippet loads the adapter as trained, and the difference it states for the full-precision base is
    what loading the adapter there gives."""
    result = export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path)])
    options = runs.read_config(tiny_sft_run)
    assert options["quantization"] == "4bit"  # the tiny recipe is QLoRA
    assert result.merge.merge_base == "dequantized"
    assert result.merge.kl_vs_trained < 1e-4 and result.merge.argmax_agreement == 1.0, result
    assert result.merge.max_logit_diff_vs_base > 1e-2, result  # the adapter was merged

    (model_args,) = from_options([ModelArguments], options)
    tokenizer = models.load_adapter_tokenizer(tmp_path / "adapter")
    trained = PeftModel.from_pretrained(models.load_causal_lm(model_args, tokenizer), str(tmp_path / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[300, 202, 350, 260, 287]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained.eval()(ids).logits, atol=1e-3)
    card = (tmp_path / "README.md").read_text()
    assert "Recipe (resolved config)" in card and "eval_loss" in card
    assert "dequantized 4-bit weights" in card
    metadata = ModelCard(card).data  # valid hub metadata; the built-in tiny model is on no hub: no base_model
    assert metadata.library_name == "peft" and metadata.base_model is None and result.hub_base is None
    assert "Original base: `builtin:tiny` (a built-in model" in card
    assert f"1. `rlhf sft` run `{tiny_sft_run}` (this adapter): trained on `builtin:tiny`" in card
    assert ModelCard((tmp_path / "merged" / "README.md").read_text()).data.library_name == "transformers"

    # the card's snippet loads the model as trained
    snippet = card.split("## Loading the adapter as trained", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "BitsAndBytesConfig(" in snippet and 'bnb_4bit_quant_type="nf4"' in snippet
    namespace: dict[str, object] = {}
    monkeypatch.chdir(tmp_path)
    exec(snippet, namespace)
    as_loaded = namespace["model"]
    # as training runs them: on CPUs with AVX512-BF16 bitsandbytes otherwise swaps in a bf16 inference kernel
    # for 4-bit layers (KL 6e-5 per token on the tiny PPO policy; GPUs never take that path)
    models._keep_4bit_layers_differentiable(as_loaded)  # type: ignore[arg-type]
    as_trained, mask = _probe_logits(trained, tokenizer)
    loaded, _ = _probe_logits(as_loaded, tokenizer)  # type: ignore[arg-type]
    assert torch.allclose(loaded[mask], as_trained[mask], atol=1e-5)

    # the adapter on the full-precision base: the difference the card and metrics.json state
    base = AutoModelForCausalLM.from_pretrained(models.resolve_model_path("builtin:tiny"), dtype=torch.float32)
    full = PeftModel.from_pretrained(base, "adapter")
    unquantized, _ = _probe_logits(full, tokenizer)
    kl = (as_trained.exp() * (as_trained - unquantized)).sum(-1)[mask]
    stated = result.full_precision
    assert stated is not None and stated.tokens == int(mask.sum())
    assert stated.kl_vs_trained == pytest.approx(float(kl.mean()), rel=1e-3) and stated.kl_vs_trained > 1e-3
    agreement = float((as_trained.argmax(-1) == unquantized.argmax(-1))[mask].float().mean())
    assert stated.argmax_agreement == pytest.approx(agreement)
    pairs = list(zip(_greedy_answers(trained, tokenizer), _greedy_answers(full, tokenizer), strict=True))
    assert stated.greedy_answers_changed == sum(a != b for a, b in pairs)
    assert stated.greedy_tokens == sum(max(len(a), len(b)) for a, b in pairs)
    padded = [(a + [-1] * (len(b) - len(a)), b + [-1] * (len(a) - len(b))) for a, b in pairs]
    assert stated.greedy_tokens_changed == sum(x != y for a, b in padded for x, y in zip(a, b, strict=True))
    assert f"mean KL {stated.kl_vs_trained:.3e} nats per token" in card
    assert f"differ at {stated.greedy_tokens_changed} of {stated.greedy_tokens} tokens" in card


def _write_config(folder: Path, **options: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    quantized = {"quantization": "4bit", "dtype": "bfloat16", "bnb_4bit_compute_dtype": "bfloat16"}
    record = {"output_dir": str(folder), **quantized, **options}
    (folder / runs.CONFIG_FILE).write_text(yaml.safe_dump(record))


def test_the_card_gives_the_hub_id_at_the_root_of_the_lineage_and_the_local_runs_in_its_body(tmp_path: Path) -> None:
    """A PPO run on an SFT run's merged model of a hub model: base_model is the hub id, the body names both runs."""
    sft, ppo = tmp_path / "runs" / "sft", tmp_path / "runs" / "ppo"
    _write_config(sft, model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct", dataset_name="my/demos")
    (sft / "merged").mkdir()
    SFTResult(output_dir=str(sft), train_loss=1.0, train_rows=10, global_steps=2, world_size=1, length_policy={}).write(
        sft
    )
    _write_config(ppo, model_name_or_path=str(sft / "merged"), reward_model_path=str(tmp_path / "runs" / "reward"))
    PPOResult(output_dir=str(ppo), steps=3).write(ppo)
    check = MergeCheck("dequantized", 10, 1e-9, 1e-8, 1.0, 1e-4, 0.5, 1e-3)
    full = FullPrecisionLoad(10, 0.0123, 0.2, 0.9, 3, 30, 7, 2)

    def card(library: str = "peft") -> str:
        options = runs.read_config(ppo)
        (model_args,) = from_options([ModelArguments], options)
        return export.model_card(ppo, options, model_args, PPOResult.read(ppo), None, check, full=full, library=library)

    text = card()
    metadata = ModelCard(text).data
    assert metadata.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and metadata.library_name == "peft"
    assert ModelCard(card("transformers")).data.library_name == "transformers"
    assert "ppo" in metadata.tags
    assert f"1. `rlhf ppo` run `{ppo}` (this adapter): trained on `{sft / 'merged'}`" in text
    assert f"2. `rlhf sft` run `{sft}` (its adapter merged into `merged/`" in text and "data `my/demos`" in text
    assert "Original base: `Qwen/Qwen2.5-0.5B-Instruct` (on the Hugging Face hub)" in text
    assert "bnb_4bit_compute_dtype=torch.bfloat16" in text and f'"{sft / "merged"}"' in text  # loads as trained
    assert "mean KL 1.230e-02 nats per token" in text and "2 of 3 answers changed" in text

    # the SFT run started from a local folder that no run of this toolkit wrote: no hub id to give
    (tmp_path / "models" / "base").mkdir(parents=True)
    _write_config(sft, model_name_or_path=str(tmp_path / "models" / "base"))
    assert ModelCard(card()).data.base_model is None and "(a local model folder)" in card()


def test_export_adapter_names_a_base_that_loads_from_any_directory(
    tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path / "export")])
    base = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and (Path(base) / "config.json").is_file(), base
    monkeypatch.chdir(tmp_path)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "export" / "adapter"))


def test_export_into_the_original_weights_reports_what_it_costs(tiny_sft_run: Path, tmp_path: Path) -> None:
    """The opt-out merge is another model for a 4-bit run: the check measures and reports it instead of passing."""
    result = export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path), "--merge_base", "original"])
    assert result.merge.merge_base == "original"
    assert result.merge.kl_vs_trained > 1e-3, result
    # merged into the original weights is the adapter loaded on them: the card's figure, measured apart
    assert result.full_precision is not None
    assert result.full_precision.kl_vs_trained == pytest.approx(result.merge.kl_vs_trained, rel=1e-2)


def test_export_refuses_a_merge_that_did_not_merge(
    tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def save_base_unchanged(model_args: ModelArguments, adapter_dir: Path, out: Path, *args: object) -> Path:
        model = AutoModelForCausalLM.from_pretrained(models.resolve_model_path("builtin:tiny"))
        model.save_pretrained(out)
        (out / merging.MERGE_FILE).write_text(json.dumps({"merge_base": "dequantized"}))
        return out

    monkeypatch.setattr(merging, "merge_adapter", save_base_unchanged)
    with pytest.raises(RuntimeError, match="does not reproduce base\\+adapter"):
        export.main(["--run_dir", str(tiny_sft_run), "--output_dir", str(tmp_path)])


def test_push_to_hub_needs_a_token(tiny_sft_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from rlhf_core.errors import ConfigError

    with pytest.raises(ConfigError, match="HF_TOKEN"):
        export.push(tmp_path, "me/model")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_run(root: Path, ci_low: float) -> None:
    _write_jsonl(
        root / "sft" / "log_history.jsonl",
        [{"step": s, "loss": 1 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 0.3}],
    )
    _write_jsonl(
        root / "reward" / "log_history.jsonl",
        [{"step": s, "loss": 0.7 / s, "accuracy": 0.6 + s / 20} for s in range(1, 6)],
    )
    spread = Distribution(mean=0.0, std=1.0, p10=-1.0, p50=0.0, p90=1.0)
    RewardResult(
        output_dir=str(root / "reward"),
        train_loss=0.3,
        train_rows=900,
        global_steps=5,
        world_size=1,
        length_policy={},
        eval=PairAccuracy(accuracy=0.8, pairs=100, mean_gap=1.0, chosen=spread, rejected=spread),
    ).write(root / "reward")
    _write_jsonl(
        root / "ppo" / "metrics.jsonl",
        [
            {
                "step": s,
                "objective/score": s,
                "objective/kl": s / 10,
                "response/length": 10,
                "gold/score": s / 5,
                "policy/entropy": 2.0 - s / 10,
                "policy/clipfrac": 0.01 * s,
                "value/explained_variance": 0.1 * s,
                "reward/member_0": s,
                "reward/member_1": s + 0.5,
                "reward/ensemble_std": 0.25 * s,
            }
            for s in range(1, 6)
        ],
    )
    _write_config(
        root / "sft", model_name_or_path="builtin:tiny", learning_rate=0.002, max_steps=-1, num_train_epochs=3
    )
    _write_config(root / "reward", model_name_or_path=str(root / "sft" / "merged"), ensemble_size=2, max_steps=40)
    _write_config(root / "ppo", model_name_or_path=str(root / "sft" / "merged"), kl_coef=0.05, steps=5, cliprange=0.2)
    stats = PolicyScores(
        gold=0.4, gold_stderr=0.05, reward=1.0, reward_stderr=0.1, length=12.0, length_stderr=0.5, eos_rate=1.0
    )
    win = WinRate(win_rate=0.76, ci_low=ci_low, ci_high=0.8, wins=70, ties=40, losses=19, pairs=129)
    (root / "eval").mkdir(parents=True)
    EvalResult(
        output_dir=str(root / "eval"),
        ppo_dir=str(root / "ppo"),
        prompts_dataset="builtin:tiny/prompts",
        sft=stats,
        ppo=replace(stats, gold=1.3),
        kl_ppo_to_sft=1.0,
        prompts=129,
        seeds=[0],
        win_rate={"gold": win, "reward": win},
        reward_model=Calibration(
            accuracy=0.8, mean_gap=1.0, pairs=10, ece=0.1, bins=[CalibrationBin(0.8, 1.0, 10, 0.9, 0.95)]
        ),
    ).write(root / "eval")
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    _write_jsonl(
        root / "eval" / "samples.jsonl",
        [
            {
                "policy": p,
                "prompt_index": 0,
                "seed": 0,
                "prompt": [{"role": "user", "content": "What is 1 plus 1?"}],
                "response": payload if p == "ppo" else "1 plus 1 is 2.",
                "reward": 1.0,
                "gold": 1.0,
            }
            for p in ("sft", "ppo")
        ],
    )


def test_report_is_one_file_with_the_verdict_embedded_plots_and_escaped_samples(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.7)
    page = report.build_report(tmp_path).read_text()
    assert "PPO beat the SFT policy" in page and "76%" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "onerror=alert(2)>" not in page
    # every plot is in the page itself (and beside it): nothing the page refers to by a path
    sources = _references(page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), [s[:40] for s in sources]
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    images = ("sft_loss.png", "reward.png", "ppo.png", "rl_diagnostics.png", "comparison.png", "calibration.png")
    for image in images:
        assert (tmp_path / "report" / image).stat().st_size > 1000, image
        assert (tmp_path / "report" / image).read_bytes() in embedded, image
    assert len(sources) == len(images) and "report/" not in page


def test_report_shows_the_rl_diagnostics_and_each_stages_hyperparameters(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.7)
    page = report.build_report(tmp_path).read_text()
    diagnostics = page.split("<h2>RL diagnostics</h2>", 1)[1].split("<h2>", 1)[0]
    for metric, first, last in (
        ("policy/entropy", "1.9", "1.5"),
        ("policy/clipfrac", "0.01", "0.05"),
        ("value/explained_variance", "0.1", "0.5"),
        ("reward/member_1", "1.5", "5.5"),
        ("reward/ensemble_std", "0.25", "1.25"),
        ("objective/kl", "0.1", "0.5"),
    ):
        assert f"<tr><td>{metric}</td><td>{first}</td><td>{last}</td>" in diagnostics, metric
    settings = page.split("<h2>Hyperparameters</h2>", 1)[1]
    assert "<th>sft</th>" in settings and "<th>reward</th>" in settings and "<th>ppo</th>" in settings
    assert "<code>kl_coef</code>&nbsp;0.05" in settings and "<code>cliprange</code>&nbsp;0.2" in settings
    assert "<code>num_train_epochs</code>&nbsp;3" in settings and "<code>max_steps</code>&nbsp;-1" not in settings
    assert "<code>model_name_or_path</code>&nbsp;sft/merged" in settings  # inside the run: relative to it
    assert "<code>ensemble_size</code>&nbsp;2" in settings


def _references(page: str) -> list[str]:
    """Every src/href (and other URL-valued attribute) of the page's tags, as a browser parses them."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v or "" for k, v in attrs if k in ("src", "href", "data", "poster", "action"))

    Parser().feed(page)
    return found


def _diagnosed(root: Path, flags: list[str]) -> None:
    diagnosis = Diagnosis(
        flags=flags,
        first_flagged=12 if flags else None,
        peak_step=9,
        peak_value=0.8,
        conservative_metric="objective/rlhf_reward",
        peak_checkpoint="checkpoint-10",
    )
    PPOResult(output_dir=str(root / "ppo"), steps=20, diagnosis=diagnosis).write(root / "ppo")


def test_report_shows_a_box_when_over_optimisation_was_flagged_and_not_otherwise(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.7)
    flag = "iteration 20: the reward model's score is flat (1.00 -> 1.01 ...) while KL to the SFT model rose"
    _diagnosed(tmp_path, [flag])
    page = report.build_report(tmp_path).read_text()
    box = page.split("<div class='verdict warn'>", 1)[1].split("</div>", 1)[0]
    assert "over-optimisation</b> from iteration 12" in box and html.escape(flag) in box
    assert "peaked at iteration 9" in box and "checkpoint-10" in box
    assert f"rlhf export --run_dir {tmp_path / 'ppo'} --checkpoint checkpoint-10" in box

    _diagnosed(tmp_path, [])  # the same run, nothing flagged
    page = report.build_report(tmp_path).read_text()
    assert "verdict warn" not in page and "over-optimisation" not in page


def test_report_says_when_ppo_did_not_clearly_win(tmp_path: Path) -> None:
    _fake_run(tmp_path, ci_low=0.45)
    assert "did not clearly beat" in report.build_report(tmp_path).read_text()


def test_the_verdict_is_the_gold_judges_interval_above_half_else_the_reward_models() -> None:
    """A win only when the lower end of the 95% interval is above 50%, by the gold judge where the task has
    one (whatever the reward model says), by the reward model on a task without one."""
    scores = PolicyScores(reward=0.1, reward_stderr=0.1, length=10.0, length_stderr=1.0, eos_rate=1.0)

    def judged(**wins: tuple[float, float]) -> tuple[bool | None, str]:
        rates = {k: WinRate(0.6, low, high, 60, 0, 40, 100) for k, (low, high) in wins.items()}
        sft, ppo = (replace(scores, gold=g) if "gold" in wins else scores for g in (0.2, 0.5))
        evaluation = Evaluation(sft=sft, ppo=ppo, kl_ppo_to_sft=1.0, prompts=100, seeds=[0], win_rate=rates)
        return report.verdict(evaluation, "DPO")

    worked, text = judged(gold=(0.45, 0.7), reward=(0.9, 0.95))
    assert worked is False and text.startswith("DPO did not clearly beat the SFT policy")
    assert "by the gold judge (95% CI 45%–70%, 100 pairs)" in text and "Mean gold score 0.20 (SFT) → 0.50 (DPO)" in text
    assert judged(gold=(0.51, 0.7), reward=(0.1, 0.2))[0] is True
    assert judged(gold=(0.5, 0.7))[0] is False  # at 50% exactly: not above it
    worked, text = judged(reward=(0.55, 0.7))
    assert worked is True and "DPO beat the SFT policy" in text and "by the reward judge" in text
    assert report.verdict(None) == (None, "No evaluation yet: run `rlhf eval` (or the pipeline's eval stage).")


def test_a_comparison_of_methods_shows_each_runs_gains_and_flags_a_judge_used_as_reward(tmp_path: Path) -> None:
    stats = PolicyScores(
        gold=0.4, gold_stderr=0.05, reward=1.0, reward_stderr=0.1, length=12.0, length_stderr=0.5, eos_rate=1.0
    )
    win = WinRate(win_rate=0.7, ci_low=0.65, ci_high=0.75, wins=70, ties=0, losses=30, pairs=100)
    runs = []
    for name, estimator, components, judged in (
        ("ppo", "gae", ["model"], False),
        ("grpo", "grpo", ["gold_reward"], True),
    ):
        folder = tmp_path / name / "ppo"  # a pipeline folder's PPO stage
        folder.mkdir(parents=True)
        evaluation = Evaluation(
            sft=stats,
            ppo=replace(stats, gold=1.1),
            kl_ppo_to_sft=2.5,
            prompts=100,
            seeds=[0],
            win_rate={"gold": win, "reward": win},
            gain={"gold": Difference(0.7, 0.5, 0.9, 100)},
        )
        PPOResult(
            output_dir=str(folder),
            steps=5,
            advantage_estimator=estimator,
            reward_components=components,
            judge_is_reward=judged,
            final={"throughput/episodes_per_second": 3.0},
            eval=evaluation,
        ).write(folder)
        runs.append(folder.parent)
    page = report.build_comparison(runs, tmp_path / "compare.html").read_text()
    assert "PPO (GAE critic)" in page and "GRPO" in page and "+0.70 [+0.50, +0.90]" in page
    assert "70.0% [65.0%, 75.0%]" in page and "0.40 → 1.10" in page and "3.00" in page
    assert "The gold judge was also a training reward" in page and "gold_reward (judge!)" in page
    assert "The gold judge was also a training reward" in report.build_report(tmp_path / "grpo").read_text()
    assert "The gold judge was also a training reward" not in report.build_report(tmp_path / "ppo").read_text()
