"""`rlhf pipeline`: the whole loop in one command, resumable stage by stage.

    sft -> generate -> annotate -> preferences -> reward -> ppo -> eval -> export -> report
                                                          (or dpo / kto: --algorithm dpo|kto)

Each stage writes into its own folder under ``output_dir`` and, when it has finished, a
``done.json`` marker; a re-run skips finished stages, and a stage that was killed part-way resumes
from its last checkpoint (``sft``, ``reward`` and ``ppo`` save them). ``--from STAGE`` clears that
stage and every later one and runs them again.

The stages are the toolkit's own commands with the recipe's configs (``recipes/<name>/{sft,
reward,ppo}.yaml``) and the pipeline's paths: candidates are sampled from the SFT model into a
feedback store (SQLite in ``output_dir`` by default), annotated either by simulated annotators
(the task's gold judge ranking the candidates, optionally with noise, through the same store API
the web app uses) or by people in the feedback app (the pipeline waits, showing progress), then
exported as preference pairs that the reward stage trains on.

``--rounds N`` iterates the human-in-the-loop part, as InstructGPT, Anthropic's HH and Llama 2 did::

    sft -> round 1 (generate -> annotate -> preferences -> reward -> ppo) -> round 2 ... -> eval -> export -> report

Round 1 is the one-round pipeline's (candidates from the SFT model). Each later round samples
candidate sets from the current policy on prompts not annotated before, lets a selector choose the
round's share of ``annotation_budget`` (:mod:`rlhf.stages.rounds`), collects rankings, retrains the
reward model from the SFT model on every ranking so far (a cold start each round: no early round's
pairs are seen more epochs than a late one's), and continues RL from the previous round's policy
(``policy_init``; the critic starts again from the new reward model, the KL leash stays to the SFT
model). The RL iterations of the recipe are split across the rounds, so three rounds cost about as
many policy updates as one. Every round writes ``round-N/`` with its stages' folders and a
``metrics.json`` (:class:`rlhf.results.RoundResult`). A run killed in any round resumes where it stopped.

``--algorithm dpo`` (or ``kto``) takes the offline route: the same annotations train ``rlhf dpo`` on
the pairs (or ``rlhf kto`` on thumbs derived from the rankings, see
:func:`feedback.export.ranking_thumbs`) instead of PPO. The reward model is still trained: the eval
stage scores both policies with it (reward-model win rate and calibration), as it does for PPO, with
the PPO recipe's sampling settings, so the routes' figures compare.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from feedback.store import Progress, Store
from rlhf import annotators, candidates, data, feedback_cli, runs
from rlhf.arguments import StageConfig
from rlhf.config import parse
from rlhf.policy import loading
from rlhf.report import build_report
from rlhf.results import PPOResult, RewardResult
from rlhf.stages import dpo, evaluate, export, kto, ppo, reward, rounds, sft, steps
from rlhf.stages.pipeline_options import ALGORITHMS, STAGES, PipelineConfig, parse_args, stages_for
from rlhf.stages.steps import AnnotateStep, GenerateStep, PreferencesStep
from rlhf_core.errors import ConfigError
from rlhf_core.rows import validate

logger = logging.getLogger(__name__)

STAGE_MODULES: dict[str, Any] = {"sft": sft, "reward": reward, "ppo": ppo, "dpo": dpo, "kto": kto}
ROUND_STAGES = ("generate", "annotate", "preferences", "reward", *ALGORITHMS)  # repeated by --rounds


class Pipeline:
    """Runs the stages of one run folder in order (the middle ones once per round), skipping finished ones."""

    def __init__(self, config: PipelineConfig, overrides: dict[str, list[str]] | None = None) -> None:
        """``overrides``: each training stage's extra options (``{"sft": ["--max_steps", "5"]}``), checked here."""
        if not config.recipe or not config.output_dir:
            raise ConfigError("recipe and output_dir are required")
        self.config = config
        self.recipe = Path(config.recipe)
        self.configs: dict[str, StageConfig[Any]] = {}
        for stage, module in STAGE_MODULES.items():
            if stage in evaluate.OFFLINE_STAGES and stage != config.algorithm:
                if (overrides or {}).get(stage):
                    raise ConfigError(f"--{stage}.* options given, but the algorithm is {config.algorithm!r}")
                continue  # the ppo recipe is always read: its sampling settings are the evaluation's
            if not (self.recipe / f"{stage}.yaml").is_file():
                raise ConfigError(f"{self.recipe}: no {stage}.yaml")
            # every recipe with its overrides parsed once, up front: a bad option fails now, not an hour in
            argv = ["--config", str(self.recipe / f"{stage}.yaml"), *(overrides or {}).get(stage, [])]
            self.configs[stage] = StageConfig(
                *parse(module.CONFIG_TYPES, argv, prog=f"rlhf pipeline --{stage}.*", description="")
            )
        self.out = Path(config.output_dir)
        self.db = config.db or f"sqlite:///{(self.out / 'feedback.db').resolve()}"
        plan = rounds.plan(
            rounds=config.rounds,
            algorithm=config.algorithm,
            select=config.select,
            selection_pool=config.selection_pool,
            overlap=config.overlap,
            annotation_budget=config.annotation_budget,
            ensemble_size=self.configs["reward"].training.ensemble_size,
            rl_steps=self.configs["ppo"].training.steps,
            default_items=lambda: len(self._distinct_prompts(limit=config.annotation_prompts)),
        )
        self.round_items, self.round_steps = plan.items, plan.steps
        self.seed_of_ppo = self.configs["ppo"].training.seed  # round N's RL draws prompts with seed + N - 1
        self.steps: dict[str, Callable[[Path, int], dict[str, Any]]] = {
            "sft": self.sft,
            "generate": self.generate,
            "annotate": self.annotate,
            "preferences": self.preferences,
            "reward": self.reward,
            "ppo": self.ppo,
            "dpo": self.offline,
            "kto": self.offline,
            "eval": self.eval,
            "export": self.export,
            "report": self.report,
        }

    # -- bookkeeping ----------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, int]]:
        """(stage, round) in the order they run; round 0 for the stages outside the rounds."""
        stages = stages_for(self.config.algorithm)
        inner = [s for s in stages if s in ROUND_STAGES]
        first, last = stages.index(inner[0]), stages.index(inner[-1])
        rounds = range(1, self.config.rounds + 1)
        return [
            *((s, 0) for s in stages[:first]),
            *((s, r) for r in rounds for s in inner),
            *((s, 0) for s in stages[last + 1 :]),
        ]

    def folder(self, stage: str, rnd: int = 0) -> Path:
        """A stage's folder: ``<out>/<stage>``, or ``<out>/round-N/<stage>`` for a round of a multi-round run."""
        if rnd and self.config.rounds > 1:
            return self.out / rounds.folder(rnd) / stage
        return self.out / stage

    def final(self, stage: str) -> Path:
        """The last round's folder of a round stage (the policy and reward model the run ends with)."""
        return self.folder(stage, self.config.rounds)

    def done(self, stage: str, rnd: int = 0) -> bool:
        return steps.is_done(self.folder(stage, rnd))

    def record(self, stage: str, rnd: int = 0) -> dict[str, Any]:
        """What a finished stage wrote into its ``done.json``."""
        return steps.record(self.folder(stage, rnd))

    def clear_from(self, stage: str) -> None:
        """Remove the folders of ``stage`` and of every stage after it (in every round: a round stage
        after generate is refused with rounds, since later rounds' items would stay in the store)."""
        if self.config.rounds > 1 and stage in ROUND_STAGES and stage != "generate":
            raise ConfigError(
                f"from_stage: {stage} of round 1 would leave later rounds' items in the feedback store; with "
                "--rounds, redo from generate (or sft), or from eval"
            )
        first = STAGES.index(stage)
        for later in STAGES[first:]:
            shutil.rmtree(self.folder(later), ignore_errors=True)
        if first <= STAGES.index("generate"):
            for rnd in range(1, self.config.rounds + 1):
                shutil.rmtree(self.out / rounds.folder(rnd), ignore_errors=True)
            if self.db.startswith("sqlite:///"):
                Path(self.db.removeprefix("sqlite:///")).unlink(missing_ok=True)  # candidates and answers go too

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        runs.write_resolved_config(self.out / "pipeline_config.yaml", "pipeline", self.config)
        if self.config.from_stage:
            self.clear_from(self.config.from_stage)
        plan = self.plan()
        if self.config.annotator == "human" and not all(self.done(s, r) for s, r in plan if s == "annotate"):
            self._check_annotators()
        last_in_round = [s for s, r in plan if r == 1][-1]
        summary: dict[str, Any] = {}
        for stage, rnd in plan:
            key = f"{rounds.folder(rnd)}/{stage}" if rnd and self.config.rounds > 1 else stage
            folder = self.folder(stage, rnd)
            if self.done(stage, rnd):
                logger.info("pipeline: %s already done, skipped", key)
                summary[key] = self.record(stage, rnd)
            else:
                started = time.time()
                logger.info("pipeline: %s", key)
                folder.mkdir(parents=True, exist_ok=True)
                figures = self.steps[stage](folder, rnd)
                summary[key] = steps.write(folder, stage, round(time.time() - started, 1), figures)
            if stage == last_in_round and self.config.rounds > 1:
                summary[rounds.folder(rnd)] = self._finish_round(rnd)
            if stage == self.config.stop_after and rnd in (0, self.config.rounds):
                break
        return summary

    def _check_annotators(self) -> None:
        """Human annotation needs accounts before the first stage trains, not after an hour of it."""
        if not any(a.active for a in self._store().annotators()):
            raise ConfigError(
                f"annotator: human, but the feedback store {self.db} has no active accounts; create them first "
                f"(`rlhf feedback annotators add NAME --db {self.db}`) or use --annotator simulated"
            )

    def _stage_config(self, stage: str, out: Path) -> StageConfig[Any]:
        """The stage's parsed recipe, writing into ``out``, resuming there if a kill left a checkpoint."""
        config = self.configs[stage]
        config.training.output_dir = str(out)
        config.training.resume = runs.last_checkpoint(out) is not None
        if self.config.disable_tqdm:
            config.training.disable_tqdm = True
        return config

    def _sft_model(self) -> str:
        return str(self.folder("sft") / sft.MERGED_DIR)

    def _prompts(self, limit: int | None = None) -> list[Any]:
        """The prompts of the split to annotate, in order (its first ``limit`` rows)."""
        config = self.config
        loaded = data.load_split(config.prompts, config.prompts_split, config.prompts_config)
        if loaded is None:
            raise ConfigError(f"{config.prompts}: no {config.prompts_split!r} split (prompts_split)")
        rows, source = loaded
        rows, column = rows[:limit], config.prompts_column
        missing = next((index for index, row in enumerate(rows) if column not in row), None)
        if missing is not None:
            raise ConfigError(
                f"{source.at(missing)}: no column {column!r} (found {sorted(rows[missing])}); "
                "set prompts_column to the column that holds the prompts"
            )
        prompts = [row[column] for row in rows]
        validate([{"prompt": prompt} for prompt in prompts], "prompt", source)
        return prompts

    def _distinct_prompts(self, limit: int | None = None) -> list[Any]:
        """The prompt split's distinct prompts in order (of its first ``limit`` rows): the store keeps each once."""
        unique: dict[str, Any] = {}
        for prompt in self._prompts(limit):
            unique.setdefault(rounds.key(prompt), prompt)
        return list(unique.values())

    # -- stages ---------------------------------------------------------------------------------

    def sft(self, out: Path, rnd: int) -> dict[str, Any]:
        config = self._stage_config("sft", out)
        config.training.merge_adapter = True  # the next stages start from the merged SFT model
        result = sft.run(config)
        return {"eval_loss": result.eval_loss}

    def _store(self) -> Any:
        return Store.create(self.db)

    def _generation(self) -> candidates.GenerationSettings:
        return candidates.GenerationSettings(
            num_candidates=self.config.num_candidates,
            temperature=self.config.temperature,
            max_new_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
        )

    def generate(self, out: Path, rnd: int) -> dict[str, Any]:
        """Round 1: candidates from the SFT model for the first prompts. Later rounds: :meth:`_generate_selected`."""
        if rnd > 1:
            return self._generate_selected(out, rnd)
        prompts_file = out / "prompts.jsonl"
        if self.round_items is None:  # the one-round pipeline: the first annotation_prompts rows
            prompts = self._prompts(self.config.annotation_prompts)
        else:  # this round's share of the budget: that many distinct prompts
            prompts = self._distinct_prompts()[: self.round_items[0]]
        with prompts_file.open("w") as handle:
            for prompt in prompts:
                handle.write(json.dumps({"prompt": prompt}) + "\n")
        store = self._store()
        store.update_settings(overlap=self.config.overlap, mode="ranking")
        # the SFT model as the reward and PPO stages load it (4-bit for QLoRA): the policy annotators see
        quantization = self.configs["ppo"].model.quantization
        report = candidates.generate(
            store,
            self._sft_model(),
            prompts_path=str(prompts_file),
            settings=self._generation(),
            batch_size=64,
            quantization=quantization,
        )
        batch = asdict(rounds.first_batch(store, prompts)) if self.config.rounds > 1 else {}
        return {**asdict(report), "quantization": quantization, **batch}

    def _generate_selected(self, out: Path, rnd: int) -> dict[str, Any]:
        """Sample candidate sets from the previous round's policy on prompts never annotated, store the selector's
        choice (:func:`rlhf.stages.rounds.generate_selected`)."""
        choice = rounds.Selection(
            self.config.select, self.config.selection_pool, self.config.num_candidates, self.config.seed
        )
        policy = self.folder(self.config.algorithm, rnd - 1)

        def sampler() -> Any:  # the previous round's policy and reward model, sampling as the candidates are
            ppo_stage = self.configs["ppo"]
            settings = replace(
                ppo_stage.training,
                reward_model_path=str(self.folder("reward", rnd - 1)),
                max_new_tokens=self.config.max_new_tokens,
                temperature=self.config.temperature,
            )
            model_args = replace(ppo_stage.model, model_name_or_path=self._sft_model())
            return loading.load_policy(model_args, policy, settings, settings, settings, seed=settings.seed)

        store, wanted = self._store(), self.round_items[rnd - 1] if self.round_items else 0
        report, batch = rounds.generate_selected(
            out,
            store,
            rnd,
            choice,
            lambda: rounds.candidate_pool(
                store,
                self._distinct_prompts(),
                rnd,
                wanted,
                choice,
                sampler,
                loading.load_judge(self.config.gold_judge),
            ),
            model=self._sft_model(),
            adapter=str(policy),
            generation=asdict(self._generation()),
        )
        return {**asdict(report), **asdict(batch)}

    def annotate(self, out: Path, rnd: int) -> dict[str, Any]:
        store = self._store()
        if self.config.annotator == "simulated":
            judge = loading.load_judge(self.config.gold_judge)
            if judge is None:
                raise ConfigError("--annotator simulated needs a gold_judge ('module:function')")
            report = annotators.annotate(
                store,
                judge,
                annotators=self.config.overlap,
                noise=self.config.noise,
                seed=self.config.seed,
                show_progress=not self.config.disable_tqdm,
            )
            summary = {"annotator": "simulated", **asdict(report), **_progress_counts(store.progress())}
        else:
            progress = feedback_cli.wait_for_annotations(
                store,
                self.db,
                self.config.host,
                self.config.port,
                timeout=self.config.wait_timeout,
                show_progress=not self.config.disable_tqdm,
            )
            summary = {"annotator": "human", **_progress_counts(progress)}
        if self.config.rounds > 1:
            summary["batch"] = asdict(rounds.annotated_batch(store, rnd))
        runs.write_metrics(out, summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def preferences(self, out: Path, rnd: int) -> dict[str, Any]:
        """Every ranking so far as preference pairs (and as KTO thumbs): what this round's reward model learns."""
        config = self.config
        return rounds.preferences(
            out, self._store(), aggregation=config.aggregation, test_fraction=config.test_fraction, seed=config.seed
        )

    def reward(self, out: Path, rnd: int) -> dict[str, Any]:
        config = self._stage_config("reward", out)
        config.model.model_name_or_path = self._sft_model()
        config.data.dataset_name = str(self.folder("preferences", rnd))
        result = reward.run(config)
        return {"accuracy": result.eval.accuracy if result.eval is not None else None}

    def ppo(self, out: Path, rnd: int) -> dict[str, Any]:
        config = self._stage_config("ppo", out)
        config.model.model_name_or_path = self._sft_model()
        config.training.reward_model_path = str(self.folder("reward", rnd))
        config.training.eval_max_prompts = 0  # the eval stage compares the policies, on more seeds
        if self.round_steps is not None:  # a later round continues the previous round's policy, on other prompts
            config.training.steps = self.round_steps[rnd - 1]
            config.training.policy_init = str(self.folder("ppo", rnd - 1)) if rnd > 1 else None
            config.training.seed = self.seed_of_ppo + rnd - 1
        result = ppo.run(config)
        return {"steps": result.steps}

    def offline(self, out: Path, rnd: int) -> dict[str, Any]:
        """``rlhf dpo`` on the preference pairs, or ``rlhf kto`` on the rankings as thumbs."""
        stage = self.config.algorithm
        config = self._stage_config(stage, out)
        config.model.model_name_or_path = self._sft_model()
        exported = self.folder("preferences")
        config.data.dataset_name = str(exported / rounds.KTO_DIR if stage == "kto" else exported)
        result = (kto if stage == "kto" else dpo).run(config)
        return {"steps": result.global_steps, "train_rows": result.train_rows}

    def eval(self, out: Path, rnd: int) -> dict[str, Any]:
        settings = evaluate.EvalConfig(
            run_dir=str(self.final(self.config.algorithm)),
            output_dir=str(out),
            seeds=list(self.config.eval_seeds),
            disable_tqdm=self.config.disable_tqdm,
        )
        if self.config.algorithm != "ppo":  # judged as PPO would be: its prompts, sampling, reward model, judge
            ppo_config = self.configs["ppo"]
            settings.prompts = ppo_config.data.dataset_name
            settings.reward_model_path = str(self.final("reward"))
            settings.gold_judge = ppo_config.training.gold_judge
            settings.max_new_tokens = ppo_config.training.max_new_tokens
            settings.temperature = ppo_config.training.temperature
        result = evaluate.run(settings)
        return {
            "win_rate": {judge: asdict(w) for judge, w in result.win_rate.items()},
            "kl_ppo_to_sft": result.kl_ppo_to_sft,
        }

    def export(self, out: Path, rnd: int) -> dict[str, Any]:
        result = export.run(
            export.ExportConfig(
                run_dir=str(self.final(self.config.algorithm)), output_dir=str(out), eval_dir=str(self.folder("eval"))
            )
        )
        check = result.merge
        return {
            "merge_base": check.merge_base,
            "kl_vs_trained": check.kl_vs_trained,
            "argmax_agreement": check.argmax_agreement,
        }

    def report(self, out: Path, rnd: int) -> dict[str, Any]:
        path = build_report(self.out)
        return {"report": str(path.relative_to(self.out))}  # done.json paths: inside the run folder, relative

    def _finish_round(self, rnd: int) -> dict[str, Any]:
        """The round's figures, from its steps' records: ``round-N/metrics.json`` and ``round-N/done.json``."""
        folder = self.out / rounds.folder(rnd)
        if steps.is_done(folder):
            return steps.record(folder)
        result = rounds.finish(
            folder,
            rnd,
            generated=steps.read(GenerateStep, self.folder("generate", rnd)),
            annotated=steps.read(AnnotateStep, self.folder("annotate", rnd)),
            pairs=steps.read(PreferencesStep, self.folder("preferences", rnd)),
            reward_model=RewardResult.read(self.folder("reward", rnd)),
            policy=PPOResult.read(self.folder(self.config.algorithm, rnd)),
            seconds=sum(steps.read(steps.Step, self.folder(s, rnd)).seconds for s, r in self.plan() if r == rnd),
        )
        record = result.to_json()
        (folder / steps.DONE).write_text(json.dumps(record, indent=2) + "\n")
        return record


def _progress_counts(progress: Progress) -> dict[str, Any]:
    return {
        "items": progress.items,
        "complete": progress.complete,
        "answers": progress.answers,
        "overlap": progress.overlap,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    summary = Pipeline(config, overrides).run()
    report = Path(config.output_dir or ".") / "report.html"
    if report.is_file():
        print(f"\nReport: {report.resolve()}")
    return summary
