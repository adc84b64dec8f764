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
candidate sets from the current policy on prompts not annotated before (``selection_pool`` times as
many as the round may annotate), lets a selector (:mod:`rlhf.selection`: ``random``, or
``uncertainty``: the sets the current reward model is least sure of) choose the round's share of
``annotation_budget``, puts them in the store as batch N (with the selector and its score), collects
rankings, retrains the reward model from the SFT model on every ranking so far (a cold start each
round: no early round's pairs are seen more epochs than a late one's), and continues RL from the
previous round's policy (``policy_init``; the critic starts again from the new reward model, the KL
leash stays to the SFT model). The RL iterations of the recipe are split across the rounds, so three
rounds cost about as many policy updates as one. Every round writes ``round-N/`` with its stages'
folders and a ``metrics.json`` (:class:`rlhf.results.RoundResult`). A run killed in any round
resumes where it stopped.

``--algorithm dpo`` (or ``kto``) takes the offline route: the same annotations train ``rlhf dpo`` on
the pairs (or ``rlhf kto`` on thumbs derived from the rankings, see
:func:`feedback.export.ranking_thumbs`) instead of PPO. The reward model is still trained: the eval
stage scores both policies with it (reward-model win rate and calibration), as it does for PPO, with
the PPO recipe's sampling settings, so the routes' figures compare.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from feedback import export as feedback_export
from feedback.records import prompt_messages
from feedback.store import Progress, Store
from rlhf import annotators, candidates, data, runs, selection
from rlhf.config import StageConfig, parse
from rlhf.core.errors import ConfigError
from rlhf.core.rows import validate
from rlhf.ppo.trainer import load_judge
from rlhf.report import build_report
from rlhf.results import PPOResult, RewardResult, RoundResult
from rlhf.stages import dpo, evaluate, export, kto, ppo, reward, sft

logger = logging.getLogger(__name__)

STAGES = ("sft", "generate", "annotate", "preferences", "reward", "ppo", "dpo", "kto", "eval", "export", "report")
ALGORITHMS = ("ppo", "dpo", "kto")  # the policy-training stages; a run takes one of them
# the stages a recipe configures (and --stage.KEY)
STAGE_MODULES: dict[str, Any] = {"sft": sft, "reward": reward, "ppo": ppo, "dpo": dpo, "kto": kto}
KTO_DIR = "kto"  # under preferences/: the rankings as KTO thumbs
ROUND_STAGES = ("generate", "annotate", "preferences", "reward", *ALGORITHMS)  # repeated by --rounds
SELECTION_FILE = "selection.jsonl"  # a later round's candidate pool, scored, with the selector's choice


def stages_for(algorithm: str) -> tuple[str, ...]:
    """The stages a run with this policy-training algorithm goes through, in order."""
    return tuple(stage for stage in STAGES if stage not in ALGORITHMS or stage == algorithm)


DONE = "done.json"
DESCRIPTION = (
    "Run the whole loop: sft, candidates, annotation, preferences, reward, ppo, eval, export, report "
    "(--rounds N: annotation, reward and RL again on the current policy's answers)."
)


def round_folder(rnd: int) -> str:
    return f"round-{rnd}"


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal integers, the larger ones first (annotation budget, RL iterations)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


@dataclass
class PipelineConfig:
    """The pipeline's own options; each training stage's options come from the recipe's YAML files."""

    recipe: str | None = field(default=None, metadata={"help": "Recipe folder with sft.yaml, reward.yaml, ppo.yaml."})
    output_dir: str | None = field(default=None, metadata={"help": "Run folder; one sub-folder per stage."})
    from_stage: str | None = field(
        default=None, metadata={"help": "Redo this stage and every later one.", "choices": list(STAGES)}
    )
    stop_after: str | None = field(default=None, metadata={"help": "Stop after this stage.", "choices": list(STAGES)})
    db: str | None = field(default=None, metadata={"help": "Feedback store URL; unset: sqlite in output_dir."})
    prompts: str = field(
        default="builtin:tiny/prompts",
        metadata={
            "help": "Prompts to sample candidates for: a hub dataset id, a local file or folder, or a built-in set."
        },
    )
    prompts_config: str | None = field(default=None, metadata={"help": "Configuration (subset) of a hub `prompts`."})
    prompts_split: str = field(default="train", metadata={"help": "Split of `prompts` to annotate."})
    prompts_column: str = field(
        default="prompt", metadata={"help": "Column of `prompts` holding each prompt: text or chat messages."}
    )
    annotation_prompts: int = field(default=500, metadata={"help": "How many prompts to annotate."})
    num_candidates: int = field(default=4, metadata={"help": "Candidates sampled per prompt (K)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the candidates."})
    max_new_tokens: int = field(default=48, metadata={"help": "Length cap of the candidates."})
    annotator: str = field(
        default="simulated",
        metadata={
            "help": "'simulated' (gold judge ranks) or 'human' (people in the feedback app).",
            "choices": ["simulated", "human"],
        },
    )
    gold_judge: str | None = field(
        default="rlhf.tiny.task:score", metadata={"help": "'module:function' the simulated annotator ranks with."}
    )
    noise: float = field(default=0.0, metadata={"help": "Share of simulated answers shuffled at random."})
    overlap: int = field(default=1, metadata={"help": "Annotators per item (simulated: that many annotators)."})
    aggregation: str = field(
        default="majority",
        metadata={"help": "How answers of several annotators combine.", "choices": ["majority", "all"]},
    )
    test_fraction: float = field(default=0.1, metadata={"help": "Prompts held out as the preference test split."})
    host: str = field(default="127.0.0.1", metadata={"help": "Human mode: where the feedback app listens."})
    port: int = field(default=8000, metadata={"help": "Human mode: the app's port."})
    wait_timeout: float | None = field(default=None, metadata={"help": "Human mode: give up after this many seconds."})
    eval_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "Sampling seeds of the evaluation."}
    )
    rounds: int = field(
        default=1,
        metadata={"help": "Rounds of annotation -> reward model -> RL; later rounds annotate the current policy."},
    )
    annotation_budget: int | None = field(
        default=None,
        metadata={
            "help": "Rankings in total over all rounds (items x overlap), split evenly across rounds. Unset: one "
            "ranking per distinct prompt among the first annotation_prompts (per annotator)."
        },
    )
    select: str = field(
        default="random",
        metadata={
            "help": "Rounds 2+: which candidate sets go to annotators: random; uncertainty (those the current "
            "reward model is least sure how to rank); disagreement (those a reward ensemble's members score most "
            "differently; needs --reward.ensemble_size > 1).",
            "choices": list(selection.SELECTORS),
        },
    )
    selection_pool: float = field(
        default=2.0,
        metadata={"help": "Rounds 2+: candidate sets sampled per set annotated (what the selector chooses among)."},
    )
    algorithm: str = field(
        default="ppo",
        metadata={
            "help": "ppo: reward model + online RL (any --ppo.advantage_estimator); dpo or kto: offline on the same "
            "annotations (kto: rankings as thumbs, above/below their middle), evaluated with the reward model.",
            "choices": list(ALGORITHMS),
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling and simulated annotators."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


CONFIG_TYPES = [PipelineConfig]


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
        self.round_items, self.round_steps = self._plan_rounds()
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

    def _plan_rounds(self) -> tuple[list[int] | None, list[int] | None]:
        """Items to annotate and RL iterations per round (``None``: the one-round pipeline's own sizes).

        Checked before anything runs: a plan that cannot work fails now, naming the option.
        """
        config = self.config
        if config.rounds < 1:
            raise ConfigError(f"rounds: {config.rounds}; the pipeline runs at least one round")
        if config.rounds > 1 and config.algorithm != "ppo":
            raise ConfigError(
                f"rounds: {config.rounds} with --algorithm {config.algorithm}: later rounds sample the current "
                "policy and continue it, which the online route does; use --algorithm ppo (any "
                "--ppo.advantage_estimator)"
            )
        if config.select == "disagreement" and self.configs["reward"].training.ensemble_size < 2:
            raise ConfigError(
                "select: disagreement compares a reward ensemble's members, and the reward stage trains one model; "
                "add --reward.ensemble_size 4 (or select uncertainty)"
            )
        if config.selection_pool < 1:
            raise ConfigError(f"selection_pool: {config.selection_pool}; the selector needs at least one set per pick")
        if config.overlap < 1:
            raise ConfigError(f"overlap: {config.overlap}; at least one annotator per item")
        budget = config.annotation_budget
        if budget is None and config.rounds == 1:
            return None, None
        if budget is None:  # the one-round pipeline's budget: one ranking per distinct prompt it would annotate
            budget = len(self._distinct_prompts(limit=config.annotation_prompts)) * config.overlap
        if budget % config.overlap:
            raise ConfigError(f"annotation_budget: {budget} is not a multiple of overlap {config.overlap}")
        items = budget // config.overlap
        if items < config.rounds:
            raise ConfigError(
                f"annotation_budget: {budget} rankings is smaller than one batch per round "
                f"(rounds {config.rounds} x overlap {config.overlap} = {config.rounds * config.overlap})"
            )
        steps = self.configs["ppo"].training.steps
        if steps < config.rounds:
            raise ConfigError(f"--ppo.steps: {steps} RL iterations cannot be split over {config.rounds} rounds")
        return split_evenly(items, config.rounds), split_evenly(steps, config.rounds)

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
            return self.out / round_folder(rnd) / stage
        return self.out / stage

    def final(self, stage: str) -> Path:
        """The last round's folder of a round stage (the policy and reward model the run ends with)."""
        return self.folder(stage, self.config.rounds)

    def done(self, stage: str, rnd: int = 0) -> bool:
        return (self.folder(stage, rnd) / DONE).is_file()

    def record(self, stage: str, rnd: int = 0) -> dict[str, Any]:
        """What a finished stage wrote into its ``done.json``."""
        return dict(json.loads((self.folder(stage, rnd) / DONE).read_text()))

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
                shutil.rmtree(self.out / round_folder(rnd), ignore_errors=True)
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
            key = f"{round_folder(rnd)}/{stage}" if rnd and self.config.rounds > 1 else stage
            folder = self.folder(stage, rnd)
            if self.done(stage, rnd):
                logger.info("pipeline: %s already done, skipped", key)
                summary[key] = self.record(stage, rnd)
            else:
                started = time.time()
                logger.info("pipeline: %s", key)
                folder.mkdir(parents=True, exist_ok=True)
                result = self.steps[stage](folder, rnd)
                record = {"stage": stage, "seconds": round(time.time() - started, 1), **result}
                (folder / DONE).write_text(json.dumps(record, indent=2, default=str) + "\n")
                summary[key] = record
            if stage == last_in_round and self.config.rounds > 1:
                summary[round_folder(rnd)] = self._finish_round(rnd)
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
            unique.setdefault(_key(prompt), prompt)
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
        selected = {}
        if self.config.rounds > 1:
            ids = store.add_prompts(prompts)  # already stored: their ids
            store.assign_batch(ids, 1, selection.FIRST_ROUND)
            selected = {"items": len(set(ids)), "pool": len(set(ids)), "selected_by": selection.FIRST_ROUND}
        return {**asdict(report), "quantization": quantization, **selected}

    def _generate_selected(self, out: Path, rnd: int) -> dict[str, Any]:
        """Sample candidate sets from the current policy on prompts never annotated, keep the selector's choice.

        The scored pool is written to ``selection.jsonl`` before anything is stored, so a run killed
        while storing the batch stores the same batch when it resumes.
        """
        pool_file = out / SELECTION_FILE
        if not pool_file.is_file():
            rows = self._candidate_pool(rnd)
            partial = pool_file.with_suffix(".partial")
            partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
            partial.replace(pool_file)
        rows = [json.loads(line) for line in pool_file.read_text().splitlines()]
        chosen = [row for row in rows if row["chosen"]]
        store = self._store()
        ids = store.add_prompts([row["prompt"] for row in chosen])
        report = candidates.GenerateReport(prompts=len(chosen))
        adapter = str(self.folder(self.config.algorithm, rnd - 1))
        for prompt_id, row in zip(ids, chosen, strict=True):
            candidates.store_set(
                store,
                report,
                prompt_id,
                row["candidates"],
                model=self._sft_model(),
                adapter=adapter,
                generation=asdict(self._generation()),
            )
        store.assign_batch(ids, rnd, self.config.select, [row[self._selection_score] for row in chosen])
        accuracy, pairs = selection.ranking_accuracy([(r["rewards"], r["gold"]) for r in rows if r["gold"]])
        return {
            **asdict(report),
            "items": len(chosen),
            "pool": len(rows),
            "selected_by": self.config.select,
            "mean_uncertainty_pool": _mean([r["uncertainty"] for r in rows]),
            "mean_uncertainty_selected": _mean([r["uncertainty"] for r in chosen]),
            "reward_accuracy_on_policy": accuracy,
            "reward_accuracy_pairs": pairs,
        }

    @property
    def _selection_score(self) -> str:
        """Which score of a candidate set the selector ranks by (and the store records with the batch)."""
        return "disagreement" if self.config.select == "disagreement" else "uncertainty"

    def _candidate_pool(self, rnd: int) -> list[dict[str, Any]]:
        """Candidate sets of the previous round's policy, scored by its reward model (and the gold judge, if any)."""
        wanted = self.round_items[rnd - 1] if self.round_items else 0
        stored = {_key(messages) for _, messages in self._store().prompts()}
        fresh = [p for p in self._distinct_prompts() if _key(p) not in stored]
        pool = fresh[: math.ceil(self.config.selection_pool * wanted)]
        if len(pool) < wanted:
            logger.warning("round %d: only %d unannotated prompts left for %d items", rnd, len(pool), wanted)
        ppo_stage = self.configs["ppo"]
        settings = replace(
            ppo_stage.training,
            reward_model_path=str(self.folder("reward", rnd - 1)),
            max_new_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
        )
        model_args = replace(ppo_stage.model, model_name_or_path=self._sft_model())
        sampler = ppo.policy_sampler(model_args, settings, self.folder(self.config.algorithm, rnd - 1))
        texts, scores, members = candidates.propose(
            sampler, pool, self.config.num_candidates, seed=self.config.seed * 1000 + rnd
        )
        judge = load_judge(self.config.gold_judge)
        rows = []
        for prompt, answers, rewards, each in zip(pool, texts, scores, members, strict=True):
            kept: dict[str, int] = {}  # each distinct answer, at its first place (its scores are the same anywhere)
            for i, text in enumerate(answers):
                if text:
                    kept.setdefault(text, i)
            if len(kept) < 2:  # nothing to rank: a set of one answer yields no preference
                continue
            row = {
                "prompt": prompt,
                "candidates": list(kept),
                "rewards": [rewards[i] for i in kept.values()],
                "gold": [judge(prompt, text) for text in kept] if judge is not None else None,
                "uncertainty": selection.uncertainty([rewards[i] for i in kept.values()]),
            }
            if len(each) > 1:
                row["disagreement"] = selection.disagreement([[m[i] for i in kept.values()] for m in each])
            rows.append(row)
        by = self._selection_score
        picked = set(
            selection.select([r[by] for r in rows], min(wanted, len(rows)), self.config.select, self.config.seed + rnd)
        )
        return [{**row, "chosen": i in picked} for i, row in enumerate(rows)]

    def annotate(self, out: Path, rnd: int) -> dict[str, Any]:
        store = self._store()
        if self.config.annotator == "simulated":
            judge = load_judge(self.config.gold_judge)
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
            summary = {"annotator": "human", **self._wait_for_people(store)}
        if self.config.rounds > 1:
            batch = next(b for b in store.progress().batches if b.batch == rnd)
            summary["batch"] = {"round": rnd, "items": batch.items, "answers": batch.answers}
        runs.write_metrics(out, summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _wait_for_people(self, store: Any) -> dict[str, Any]:
        """Start the feedback app and wait until every item has its answers, showing progress."""
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlhf",
                "feedback",
                "serve",
                "--db",
                self.db,
                "--host",
                self.config.host,
                "--port",
                str(self.config.port),
            ]
        )
        print(
            f"\nAnnotate at http://{self.config.host}:{self.config.port}/ (create accounts with "
            f"`rlhf feedback annotators --db {self.db} ...`). The pipeline continues when all items are done.\n",
            flush=True,
        )
        started = time.time()
        try:
            progress = store.progress()
            bar = tqdm(total=progress.items, desc="items annotated", unit="item", disable=self.config.disable_tqdm)
            while progress.complete < progress.items:
                if server.poll() is not None:
                    raise RuntimeError(f"the feedback app exited with code {server.returncode}")
                if self.config.wait_timeout is not None and time.time() - started > self.config.wait_timeout:
                    raise TimeoutError(f"annotation not finished after {self.config.wait_timeout}s: {progress}")
                time.sleep(2)
                progress = store.progress()
                bar.update(progress.complete - bar.n)
            bar.close()
            return _progress_counts(progress)
        finally:
            server.terminate()
            server.wait(timeout=30)

    def preferences(self, out: Path, rnd: int) -> dict[str, Any]:
        """Every ranking so far as preference pairs (and as KTO thumbs): what this round's reward model learns."""
        config, store = self.config, self._store()
        options = {"aggregation": config.aggregation, "test_fraction": config.test_fraction, "seed": config.seed}
        options["overwrite"] = True  # a stage run again after a crash replaces its earlier export (never merges)
        report = feedback_export.export(store, "pairs", out, **options)
        if not report.rows.get("train"):
            raise RuntimeError(f"no preference pairs to train on: {report}")
        # the same rankings as KTO thumbs, for --algorithm kto
        thumbs = feedback_export.export(store, "kto", out / KTO_DIR, **options)
        return {"rows": report.rows, "answers": report.answers, "kto_rows": thumbs.rows}

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
        config.data.dataset_name = str(exported / KTO_DIR if stage == "kto" else exported)
        result = (kto if stage == "kto" else dpo).run(config)
        return {"steps": result.global_steps, "train_rows": result.train_rows}

    def eval(self, out: Path, rnd: int) -> dict[str, Any]:
        settings = evaluate.EvalConfig(
            ppo_dir=str(self.final(self.config.algorithm)),
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
        """The round's figures, from its stages' records: ``round-N/metrics.json`` and ``round-N/done.json``."""
        folder = self.out / round_folder(rnd)
        if (folder / DONE).is_file():
            return dict(json.loads((folder / DONE).read_text()))
        generated, annotated = self.record("generate", rnd), self.record("annotate", rnd)
        pairs = self.record("preferences", rnd)["rows"]
        reward_model = RewardResult.read(self.folder("reward", rnd))
        policy = PPOResult.read(self.folder(self.config.algorithm, rnd))
        seconds = sum(self.record(stage, rnd)["seconds"] for stage, r in self.plan() if r == rnd)
        result = RoundResult(
            round=rnd,
            items=generated["items"],
            answers=annotated["batch"]["answers"],
            selected_by=generated["selected_by"],
            pool=generated["pool"],
            mean_uncertainty_pool=generated.get("mean_uncertainty_pool"),
            mean_uncertainty_selected=generated.get("mean_uncertainty_selected"),
            reward_accuracy_on_policy=generated.get("reward_accuracy_on_policy"),
            reward_accuracy_pairs=generated.get("reward_accuracy_pairs", 0),
            reward_held_out_accuracy=reward_model.eval.accuracy if reward_model.eval is not None else None,
            preference_pairs=pairs.get("train", 0),
            policy_steps=policy.steps,
            policy=policy.final,
            seconds=round(seconds, 1),
        )
        result.write(folder)
        record = result.to_json()
        (folder / DONE).write_text(json.dumps(record, indent=2) + "\n")
        return record


def _key(prompt: Any) -> str:
    """A prompt's identity as the store sees it (text and chat messages alike)."""
    return json.dumps(prompt_messages(prompt), sort_keys=True)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _progress_counts(progress: Progress) -> dict[str, Any]:
    return {
        "items": progress.items,
        "complete": progress.complete,
        "answers": progress.answers,
        "overlap": progress.overlap,
    }


def split_stage_options(argv: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--sft.max_steps 5`` (or ``--sft.max_steps=5``; a bare ``--stage.flag`` for booleans) -> the sft stage's
    ``--max_steps 5``; everything else is the pipeline's own."""
    own: list[str] = []
    stages: dict[str, list[str]] = {stage: [] for stage in STAGE_MODULES}
    args = list(argv)
    while args:
        arg = args.pop(0)
        stage, dot, option = arg[2:].partition(".") if arg.startswith("--") else ("", "", "")
        if not dot:
            own.append(arg)
            continue
        if stage not in stages:
            raise ConfigError(f"{arg}: no stage {stage!r} takes options; use --{'.KEY, --'.join(STAGE_MODULES)}.KEY")
        key, equals, value = option.partition("=")
        if equals:
            stages[stage] += [f"--{key}", value]
        elif args and not args[0].startswith("--"):
            stages[stage] += [f"--{key}", args.pop(0)]
        else:
            stages[stage].append(f"--{key}")
    return own, stages


def parse_args(argv: Sequence[str]) -> tuple[PipelineConfig, dict[str, list[str]]]:
    """The pipeline's options (the recipe folder's ``pipeline.yaml`` as defaults) and each stage's overrides."""
    own, overrides = split_stage_options(argv)
    if "--recipe" in own and "--config" not in own:
        recipe = Path(own[own.index("--recipe") + 1])
        if (recipe / "pipeline.yaml").is_file():  # the recipe's pipeline settings are the defaults
            own = ["--config", str(recipe / "pipeline.yaml"), *own]
    (config,) = parse(CONFIG_TYPES, own, prog="rlhf pipeline", description=DESCRIPTION)
    return config, overrides


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    summary = Pipeline(config, overrides).run()
    report = Path(config.output_dir or ".") / "report.html"
    if report.is_file():
        print(f"\nReport: {report.resolve()}")
    return summary
