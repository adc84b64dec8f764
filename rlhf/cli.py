"""`rlhf`: one command, a subcommand per stage.

Each subcommand owns its parser (``rlhf sft --help`` lists every option of the stage with its
meaning); this module only dispatches, so ``rlhf --help`` stays fast and every stage can also be
run as ``python -m rlhf <stage>``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from rlhf import __version__
from rlhf_core.errors import USER_ERRORS

# name -> (module with main(argv), one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("rlhf.stages.sft", "supervised fine-tuning of a LoRA/QLoRA adapter on chat data"),
    "reward": ("rlhf.stages.reward", "train a reward model on preference pairs"),
    "dpo": ("rlhf.stages.dpo", "DPO on preference pairs: a LoRA policy, the SFT model as reference"),
    "kto": ("rlhf.stages.kto", "KTO on thumbs (unpaired labels): a LoRA policy, the SFT model as reference"),
    "ppo": ("rlhf.stages.ppo", "PPO against the reward model, all roles on one shared (4-bit) base"),
    "pipeline": ("rlhf.stages.pipeline", "the whole loop: sft, annotation, reward, ppo, eval, export, report"),
    "eval": ("rlhf.stages.evaluate", "evaluate a PPO run: win rates vs SFT, KL, ROUGE, reward-model calibration"),
    "export": (
        "rlhf.stages.export",
        "export an adapter as is and merged into a full-precision model, with a model card",
    ),
    "report": ("rlhf.report", "write report.html and plots for a pipeline run folder"),
    "data": ("rlhf.data_cli", "write the built-in tiny task's datasets as JSONL, or check a dataset"),
    "feedback": ("rlhf.feedback_cli", "annotation app, feedback store, preference export and LangSmith sync"),
}

# Algorithms that are not commands of their own: the command that runs each (one line each).
RUN_AS: dict[str, str] = {
    "grpo": "GRPO runs as `rlhf ppo --advantage_estimator grpo` (a recipe: `rlhf ppo --config "
    "recipes/qwen2.5-0.5b-instruct/grpo.yaml`; in the pipeline: --ppo.advantage_estimator grpo)",
    "dr_grpo": "Dr. GRPO runs as `rlhf ppo --advantage_estimator grpo --scale_rewards false --loss_type dr_grpo`",
    "rloo": "RLOO runs as `rlhf ppo --advantage_estimator rloo` (num_generations answers per prompt, 4 unless set; "
    "in the pipeline: --ppo.advantage_estimator rloo)",
    "reinforce_pp": "REINFORCE++ runs as `rlhf ppo --advantage_estimator reinforce_pp` "
    "(in the pipeline: --ppo.advantage_estimator reinforce_pp)",
}
RUN_AS["reinforce++"] = RUN_AS["reinforce_pp"]

USAGE = """usage: rlhf <command> [--config recipe.yaml] [--option value ...]

Align a language model on modest hardware: SFT, reward modelling and PPO on one QLoRA base.

commands:
{commands}

Every option of a command can be set in its YAML recipe or on the command line (which wins).
`rlhf <command> --help` lists them. Example:
  rlhf sft --config recipes/tiny/sft.yaml --learning_rate 1e-3 --output_dir runs/x
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"rlhf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    alias = name.lower().replace("-", "_")
    if name not in COMMANDS and alias in RUN_AS:
        print(f"rlhf: {name!r} is not a command: {RUN_AS[alias]}", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        print(f"rlhf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # TRL's configs still use the name transformers 5.23 deprecated; users cannot act on the warning.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    logging.basicConfig(level=os.environ.get("RLHF_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        module.main(rest)
    except USER_ERRORS as error:
        print(f"rlhf {name}: error: {error}", file=sys.stderr)
        return 2
    if "torch.distributed" in sys.modules:  # never import torch here: most commands run without it
        from rlhf import distributed

        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
