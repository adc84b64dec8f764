"""What the stages built on a transformers ``Trainer`` (``rlhf sft``, ``reward``, ``dpo``, ``kto``) share.

Each of them builds a TRL trainer on the (quantized) base with a fresh LoRA and runs it the same way
(:func:`run`): find the checkpoint to resume from, build, record the resolved config (after the build
resolved what the recipe left unset), train, evaluate, save the adapter (whole, under FSDP), write the
log history, and write the stage's typed result. A stage passes what differs: how it builds its
trainer and which figures its result adds to the ones every :class:`~rlhf.results.TrainerResult`
reports. Building, the steps every build takes are here too: the dtypes and the FSDP set-up before
anything loads (:func:`setup`), each split's length policy (:func:`within_length`), and the trainer
on the loaded model (:func:`make_trainer`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from datasets import Dataset
from transformers import PreTrainedModel, Trainer

from rlhf import models, runs, sharding
from rlhf.arguments import ModelArguments, StageConfig
from rlhf.results import LengthReport, TrainerResult

TrainerT = TypeVar("TrainerT", bound=Trainer)
ResultT = TypeVar("ResultT", bound=TrainerResult)
BuiltT = TypeVar("BuiltT")  # what a stage's build found out besides the trainer (length reports, KTO's labels)


def setup(model_args: ModelArguments, config: Any, stage: str) -> None:
    """Before any data or model loads: the dtypes the recipe left to the hardware, and FSDP-QLoRA's set-up."""
    models.resolve_dtypes(model_args, config)
    if config.fsdp:
        sharding.prepare_trainer(model_args, config, stage)


def within_length(
    splits: dict[str, Dataset | None], config: Any, check: Callable[[Dataset, str], tuple[Dataset, LengthReport]]
) -> tuple[Dataset, Dataset | None, dict[str, LengthReport]]:
    """The train and eval splits through the stage's length policy (``check(rows, split name)``) and what it
    did to each; without held-out rows, no evaluation is scheduled."""
    reports: dict[str, LengthReport] = {}
    checked: dict[str, Dataset | None] = {}
    for name, rows in splits.items():
        checked[name] = None
        if rows is not None:
            checked[name], reports[name] = check(rows, name)
    if checked["eval"] is None:
        config.eval_strategy = "no"
    train = checked["train"]
    assert train is not None  # data.load_splits always returns training rows
    return train, checked["eval"], reports


def make_trainer(
    trainer_class: Callable[..., TrainerT],
    model: PreTrainedModel,
    model_args: ModelArguments,
    config: Any,
    task: str,
    **kwargs: Any,
) -> TrainerT:
    """The stage's TRL trainer on the loaded ``model`` with a fresh LoRA for ``task`` (``CAUSAL_LM``,
    ``SEQ_CLS``); ``kwargs``: its datasets, tokenizer and options of its own."""
    if config.fsdp:
        sharding.wrap_decoder_layers(config, model)
    trainer = trainer_class(model=model, args=config, peft_config=models.lora_config(model_args, task), **kwargs)
    models.match_trainable_dtype(trainer.model, config.bf16 or config.fp16)
    return trainer


@dataclass(frozen=True)
class Trained(Generic[TrainerT]):
    """A trainer that has trained and saved, and the figures every :class:`TrainerResult` reports."""

    trainer: TrainerT
    figures: dict[str, Any]  # output_dir, train_loss, train_rows, global_steps, world_size, history's losses
    main_process: bool  # the process that writes the run folder


def run(
    stage: str,
    config: StageConfig[Any],
    build: Callable[[], tuple[TrainerT, BuiltT]],
    result: Callable[[Trained[TrainerT], BuiltT], ResultT],
    *,
    evaluate: bool = True,
    finish: Callable[[ResultT, bool], ResultT] | None = None,
) -> ResultT:
    """Build, train (resuming where ``--resume`` finds a checkpoint), save, and write the stage's result.

    ``build``: the trainer and what else the build found out (the config is recorded after it
    returns); ``result``: the stage's result from the trained trainer and that; ``evaluate``: evaluate
    on the held-out rows once trained (logged, so the history's last ``eval_loss`` is the final
    model's); ``finish``: work after training on the saved adapter (SFT's merge), called with the
    result and whether this is the main process, once the trainer, its optimizer state and the
    accelerator's references are freed.
    """
    options = config.training
    started = time.time()
    checkpoint = runs.start(stage, options.output_dir, options.resume)
    trainer, built = build()
    runs.record_config(stage, options.output_dir, config.model, config.data, options)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    if evaluate and trainer.eval_dataset is not None:
        trainer.evaluate()
    sharding.gather_for_save(trainer)
    trainer.save_model(options.output_dir)
    main_process = trainer.is_world_process_zero()
    history = trainer.state.log_history
    if main_process:
        runs.write_history(options.output_dir, history)
    figures = {
        "output_dir": options.output_dir,
        "train_loss": output.training_loss,
        "train_rows": len(trainer.train_dataset),
        "global_steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        **runs.summarize_history(history),
    }
    done = result(Trained(trainer, figures, main_process), built)
    if finish is not None:
        # What follows loads models again (SFT's merge: the base, the merged model and the model as trained):
        # the training copy goes first (measured on a 494M model in 4-bit on CPU: the SFT stage's peak was
        # the merge, with it still held).
        trainer.accelerator.free_memory()
        del trainer
        gc.collect()
        done = finish(done, main_process)
    done = replace(done, runtime_seconds=round(time.time() - started, 1))
    if main_process:
        done.write(options.output_dir)
    return done
