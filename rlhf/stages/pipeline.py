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
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from feedback import export as feedback_export
from feedback.store import Progress, Store
from rlhf import annotators, candidates, data, runs
from rlhf.config import StageConfig, parse
from rlhf.core.errors import ConfigError
from rlhf.ppo.trainer import load_judge
from rlhf.report import build_report
from rlhf.stages import dpo, evaluate, export, kto, ppo, reward, sft

logger = logging.getLogger(__name__)

STAGES = ("sft", "generate", "annotate", "preferences", "reward", "ppo", "dpo", "kto", "eval", "export", "report")
ALGORITHMS = ("ppo", "dpo", "kto")  # the policy-training stages; a run takes one of them
# the stages a recipe configures (and --stage.KEY)
STAGE_MODULES: dict[str, Any] = {"sft": sft, "reward": reward, "ppo": ppo, "dpo": dpo, "kto": kto}
KTO_DIR = "kto"  # under preferences/: the rankings as KTO thumbs


def stages_for(algorithm: str) -> tuple[str, ...]:
    """The stages a run with this policy-training algorithm goes through, in order."""
    return tuple(stage for stage in STAGES if stage not in ALGORITHMS or stage == algorithm)


DONE = "done.json"
DESCRIPTION = "Run the whole loop: sft, candidates, annotation, preferences, reward, ppo, eval, export, report."


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
    prompts: str = field(default="builtin:tiny/prompts", metadata={"help": "Prompts to sample candidates for."})
    prompts_split: str = field(default="train", metadata={"help": "Split of `prompts` to annotate."})
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
    """Runs the stages of one run folder in order, skipping finished ones."""

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
        self.steps: dict[str, Callable[[Path], dict[str, Any]]] = {
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

    def folder(self, stage: str) -> Path:
        return self.out / stage

    def done(self, stage: str) -> bool:
        return (self.folder(stage) / DONE).is_file()

    def clear_from(self, stage: str) -> None:
        for later in STAGES[STAGES.index(stage) :]:
            shutil.rmtree(self.folder(later), ignore_errors=True)
        if STAGES.index(stage) <= STAGES.index("generate") and self.db.startswith("sqlite:///"):
            Path(self.db.removeprefix("sqlite:///")).unlink(missing_ok=True)  # candidates and answers go too

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        runs.write_resolved_config(self.out / "pipeline_config.yaml", "pipeline", self.config)
        if self.config.from_stage:
            self.clear_from(self.config.from_stage)
        summary: dict[str, Any] = {}
        for stage in stages_for(self.config.algorithm):
            if self.done(stage):
                logger.info("pipeline: %s already done, skipped", stage)
                summary[stage] = json.loads((self.folder(stage) / DONE).read_text())
            else:
                started = time.time()
                logger.info("pipeline: %s", stage)
                self.folder(stage).mkdir(parents=True, exist_ok=True)
                result = self.steps[stage](self.folder(stage))
                record = {"stage": stage, "seconds": round(time.time() - started, 1), **result}
                (self.folder(stage) / DONE).write_text(json.dumps(record, indent=2, default=str) + "\n")
                summary[stage] = record
            if stage == self.config.stop_after:
                break
        return summary

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

    # -- stages ---------------------------------------------------------------------------------

    def sft(self, out: Path) -> dict[str, Any]:
        config = self._stage_config("sft", out)
        config.training.merge_adapter = True  # the next stages start from the merged SFT model
        result = sft.run(config)
        return {"eval_loss": result.eval_loss}

    def _store(self) -> Any:
        return Store.create(self.db)

    def generate(self, out: Path) -> dict[str, Any]:
        loaded = data.load_split(self.config.prompts, self.config.prompts_split)
        if loaded is None:
            raise ConfigError(f"{self.config.prompts}: no {self.config.prompts_split!r} split")
        prompts_file = out / "prompts.jsonl"
        with prompts_file.open("w") as handle:
            for row in loaded[0][: self.config.annotation_prompts]:
                handle.write(json.dumps({"prompt": row["prompt"]}) + "\n")
        store = self._store()
        store.update_settings(overlap=self.config.overlap, mode="ranking")
        settings = candidates.GenerationSettings(
            num_candidates=self.config.num_candidates,
            temperature=self.config.temperature,
            max_new_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
        )
        # the SFT model as the reward and PPO stages load it (4-bit for QLoRA): the policy annotators see
        quantization = self.configs["ppo"].model.quantization
        report = candidates.generate(
            store,
            self._sft_model(),
            prompts_path=str(prompts_file),
            settings=settings,
            batch_size=64,
            quantization=quantization,
        )
        return {**asdict(report), "quantization": quantization}

    def annotate(self, out: Path) -> dict[str, Any]:
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

    def preferences(self, out: Path) -> dict[str, Any]:
        config, store = self.config, self._store()
        options = {"aggregation": config.aggregation, "test_fraction": config.test_fraction, "seed": config.seed}
        report = feedback_export.export(store, "pairs", out, **options)
        if not report.rows.get("train"):
            raise RuntimeError(f"no preference pairs to train on: {report}")
        # the same rankings as KTO thumbs, for --algorithm kto
        thumbs = feedback_export.export(store, "kto", out / KTO_DIR, **options)
        return {"rows": report.rows, "answers": report.answers, "kto_rows": thumbs.rows}

    def reward(self, out: Path) -> dict[str, Any]:
        config = self._stage_config("reward", out)
        config.model.model_name_or_path = self._sft_model()
        config.data.dataset_name = str(self.folder("preferences"))
        result = reward.run(config)
        return {"accuracy": result.eval.accuracy if result.eval is not None else None}

    def ppo(self, out: Path) -> dict[str, Any]:
        config = self._stage_config("ppo", out)
        config.model.model_name_or_path = self._sft_model()
        config.training.reward_model_path = str(self.folder("reward"))
        config.training.eval_max_prompts = 0  # the eval stage compares the policies, on more seeds
        result = ppo.run(config)
        return {"steps": result.steps}

    def offline(self, out: Path) -> dict[str, Any]:
        """``rlhf dpo`` on the preference pairs, or ``rlhf kto`` on the rankings as thumbs."""
        stage = self.config.algorithm
        config = self._stage_config(stage, out)
        config.model.model_name_or_path = self._sft_model()
        exported = self.folder("preferences")
        config.data.dataset_name = str(exported / KTO_DIR if stage == "kto" else exported)
        result = (kto if stage == "kto" else dpo).run(config)
        return {"steps": result.global_steps, "train_rows": result.train_rows}

    def eval(self, out: Path) -> dict[str, Any]:
        settings = evaluate.EvalConfig(
            ppo_dir=str(self.folder(self.config.algorithm)),
            output_dir=str(out),
            seeds=list(self.config.eval_seeds),
            disable_tqdm=self.config.disable_tqdm,
        )
        if self.config.algorithm != "ppo":  # judged as PPO would be: its prompts, sampling, reward model, judge
            ppo_config = self.configs["ppo"]
            settings.prompts = ppo_config.data.dataset_name
            settings.reward_model_path = str(self.folder("reward"))
            settings.gold_judge = ppo_config.training.gold_judge
            settings.max_new_tokens = ppo_config.training.max_new_tokens
            settings.temperature = ppo_config.training.temperature
        result = evaluate.run(settings)
        return {
            "win_rate": {judge: asdict(w) for judge, w in result.win_rate.items()},
            "kl_ppo_to_sft": result.kl_ppo_to_sft,
        }

    def export(self, out: Path) -> dict[str, Any]:
        result = export.run(
            export.ExportConfig(
                run_dir=str(self.folder(self.config.algorithm)), output_dir=str(out), eval_dir=str(self.folder("eval"))
            )
        )
        check = result.merge
        return {
            "merge_base": check.merge_base,
            "kl_vs_trained": check.kl_vs_trained,
            "argmax_agreement": check.argmax_agreement,
        }

    def report(self, out: Path) -> dict[str, Any]:
        path = build_report(self.out)
        return {"report": str(path)}


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv, overrides = split_stage_options(sys.argv[1:] if argv is None else argv)
    if "--recipe" in argv and "--config" not in argv:
        recipe = Path(argv[argv.index("--recipe") + 1])
        if (recipe / "pipeline.yaml").is_file():  # the recipe's pipeline settings are the defaults
            argv = ["--config", str(recipe / "pipeline.yaml"), *argv]
    (config,) = parse(CONFIG_TYPES, argv, prog="rlhf pipeline", description=DESCRIPTION)
    summary = Pipeline(config, overrides).run()
    report = Path(config.output_dir or ".") / "report.html"
    if report.is_file():
        print(f"\nReport: {report.resolve()}")
    return summary
