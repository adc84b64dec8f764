"""`rlhf pipeline`'s options: its own (:class:`PipelineConfig`, the recipe folder's ``pipeline.yaml`` as
defaults) and each training stage's ``--STAGE.KEY`` overrides, split from them.

Torch-free: the recipe tests and ``rlhf pipeline --help`` read them without loading a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlhf import selection
from rlhf.config import parse
from rlhf_core.errors import ConfigError

STAGES = ("sft", "generate", "annotate", "preferences", "reward", "ppo", "dpo", "kto", "eval", "export", "report")
ALGORITHMS = ("ppo", "dpo", "kto")  # the policy-training stages; a run takes one of them
CONFIGURED = ("sft", "reward", "ppo", "dpo", "kto")  # the stages a recipe configures (and --stage.KEY)


def stages_for(algorithm: str) -> tuple[str, ...]:
    """The stages a run with this policy-training algorithm goes through, in order."""
    return tuple(stage for stage in STAGES if stage not in ALGORITHMS or stage == algorithm)


DESCRIPTION = (
    "Run the whole loop: sft, candidates, annotation, preferences, reward, ppo, eval, export, report "
    "(--rounds N: annotation, reward and RL again on the current policy's answers)."
)


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


def split_stage_options(argv: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--sft.max_steps 5`` (or ``--sft.max_steps=5``; a bare ``--stage.flag`` for booleans) -> the sft stage's
    ``--max_steps 5``; everything else is the pipeline's own."""
    own: list[str] = []
    stages: dict[str, list[str]] = {stage: [] for stage in CONFIGURED}
    args = list(argv)
    while args:
        arg = args.pop(0)
        stage, dot, option = arg[2:].partition(".") if arg.startswith("--") else ("", "", "")
        if not dot:
            own.append(arg)
            continue
        if stage not in stages:
            raise ConfigError(f"{arg}: no stage {stage!r} takes options; use --{'.KEY, --'.join(CONFIGURED)}.KEY")
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
