"""Candidates to annotate: K sampled responses per prompt from a base model or a LoRA adapter on it.

``rlhf feedback generate --model runs/tiny/sft/merged --prompts prompts.jsonl --num-candidates 4``
(or ``--model builtin:tiny --adapter runs/tiny/sft``). The model and tokenizer come from
:mod:`rlhf.models`, exactly as the training stages load them; an adapter (an SFT run folder) is put
on the base with ``peft.PeftModel.from_pretrained``, and its tokenizer is used when it saved one.

Prompts are rendered with the model's chat template (generation prompt added), left-padded so
every row of a batch ends where generation starts, and sampled through the rollout engine PPO
samples through (:mod:`rlhf.engine`, ``auto``: temperature / top-p / top-k as given, nothing
inherited from the checkpoint's saved generation config) until any of the model's EOS ids or
``max_new_tokens``. Only prompts that
no annotator has been handed or answered get candidates: adding one to a ranked set would leave the
stored rankings incomplete, so such prompts are skipped and counted (``skipped_in_use``). Each
candidate is stored with the model, the adapter and the generation settings that produced it.
Identical samples of a prompt are stored once (two equal responses carry no preference), and empty
ones are not stored. Each prompt's candidates are committed as soon as its batch is done, so an
interrupted run keeps what it made. With ``langsmith_project`` each new candidate is also recorded as
a LangSmith run in that project: the store gives it a run id in the same commit and the LangSmith
sync creates the run (:mod:`feedback.langsmith_sync`), so ratings of it become feedback on that run,
and an outage only delays the runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from feedback import importer
from feedback.records import Messages
from feedback.store import Conflict, Store
from rlhf import engine, models, sampling
from rlhf.arguments import ModelArguments
from rlhf.ppo.sampler import PolicySampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How candidates are sampled (stored with each candidate)."""

    num_candidates: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    max_new_tokens: int = 128
    seed: int = 0

    def drawn(self) -> sampling.SamplingSettings:
        """What the sampler draws: ``num_candidates`` answers per prompt, nothing else set."""
        return sampling.SamplingSettings(
            self.max_new_tokens, self.temperature, self.top_p, self.top_k, num_return_sequences=self.num_candidates
        )


@dataclass
class GenerateReport:
    prompts: int = 0
    sampled: int = 0
    stored: int = 0  # distinct non-empty samples (a sample already in the store keeps its id)
    duplicates: int = 0
    empty: int = 0
    skipped_in_use: int = 0  # prompts already handed out or answered: their candidate set is fixed


def load(
    model: str, adapter: str | None = None, quantization: str = "none", dtype: str | None = None
) -> tuple[engine.RolloutEngine, Any]:
    """A rollout engine over the model (with its adapter, if any) in eval mode, synced, and its tokenizer."""
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else None
    args = ModelArguments(
        model_name_or_path=model, tokenizer_name_or_path=tokenizer_source, quantization=quantization, dtype=dtype
    )
    models.resolve_dtypes(args)
    tokenizer = models.load_tokenizer(args)
    tokenizer.padding_side = "left"
    lm = models.load_causal_lm(args, tokenizer)
    if adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter)
    if quantization == "none":
        lm = lm.to(models.process_device())
    lm.eval()
    rollouts = engine.build(
        "auto", lm, sampling.eos_token_ids(sampling.generative(lm), tokenizer), tokenizer.pad_token_id
    )
    with torch.no_grad():
        rollouts.sync()  # the weights never change here: one sync
    return rollouts, tokenizer


@torch.no_grad()
def sample_batch(
    rollouts: engine.RolloutEngine, tokenizer: Any, prompts: Sequence[Messages], settings: GenerationSettings
) -> list[list[str]]:
    """``num_candidates`` responses for each prompt of one batch (text without special tokens)."""
    query, query_mask = engine.encode_prompts(tokenizer, list(prompts), rollouts.device)
    rollout = rollouts.generate(query, query_mask, settings.drawn())
    # Rows are prompt 0's K samples, then prompt 1's...
    decoded = sampling.decode(tokenizer, rollout.tokens, rollouts.eos_ids, rollouts.pad_token_id)
    k = settings.num_candidates
    return [decoded[i * k : (i + 1) * k] for i in range(len(prompts))]


def generate(
    store: Store,
    model: str,
    *,
    adapter: str | None = None,
    prompts_path: str | None = None,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    quantization: str = "none",
    langsmith_project: str | None = None,
) -> GenerateReport:
    """Sample candidates for the prompts of a file (imported first) or, without one, every stored prompt.

    ``langsmith_project`` records each new candidate as a LangSmith run there (created by the sync).
    """
    settings = settings or GenerationSettings()
    if prompts_path:
        prompt_ids = importer.import_file(store, prompts_path).prompt_ids
        by_id = dict(store.prompts())
        todo = [(pid, by_id[pid]) for pid in dict.fromkeys(prompt_ids)]
    else:
        todo = store.prompts()
    in_use = store.prompts_in_use()
    report = GenerateReport(prompts=len(todo), skipped_in_use=sum(pid in in_use for pid, _ in todo))
    todo = [(pid, messages) for pid, messages in todo if pid not in in_use]
    if not todo:
        return report
    rollouts, tokenizer = load(model, adapter, quantization)
    generation = asdict(settings)
    torch.manual_seed(settings.seed)
    for start in tqdm(range(0, len(todo), batch_size), desc="generating", unit="batch"):
        chunk = todo[start : start + batch_size]
        samples = sample_batch(rollouts, tokenizer, [messages for _, messages in chunk], settings)
        for (prompt_id, _), texts in zip(chunk, samples, strict=True):
            store_set(
                store,
                report,
                prompt_id,
                texts,
                model=model,
                adapter=adapter,
                generation=generation,
                langsmith_project=langsmith_project,
            )
    logger.info("generated %s", report)
    return report


def distinct(texts: Sequence[str]) -> list[str]:
    """The non-empty texts, each once, in order: what is worth ranking."""
    return list(dict.fromkeys(t for t in texts if t))


def store_set(
    store: Store,
    report: GenerateReport,
    prompt_id: int,
    texts: Sequence[str],
    *,
    model: str,
    adapter: str | None,
    generation: dict[str, Any],
    langsmith_project: str | None = None,
) -> None:
    """Store one prompt's sampled candidates (distinct, non-empty), counting what was dropped in ``report``."""
    unique = distinct(texts)
    report.sampled += len(texts)
    report.empty += sum(1 for t in texts if not t)
    report.duplicates += sum(1 for t in texts if t) - len(unique)
    if not unique:
        return
    try:
        store.add_candidates(
            prompt_id, unique, model=model, adapter=adapter, generation=generation, langsmith_project=langsmith_project
        )
    except Conflict:  # handed out while we were sampling: leave it as the annotator saw it
        report.skipped_in_use += 1
        return
    report.stored += len(unique)


def propose(
    sampler: PolicySampler, prompts: Sequence[Messages], num_candidates: int, seed: int = 0, batch_size: int = 64
) -> tuple[list[list[str]], list[list[float]], list[list[list[float]]]]:
    """``num_candidates`` answers per prompt from a policy, the reward model's score of each, and each
    reward model's (K lists per prompt: one for one reward model, one per member for an ensemble).

    Sampled by the policy's :class:`~rlhf.ppo.sampler.PolicySampler` (its settings, EOS ids, one
    prompt's answers in consecutive rows as GRPO groups them) and scored as PPO scores them: the
    candidates a later round of the pipeline chooses from.
    """
    texts: list[list[str]] = []
    scores: list[list[float]] = []
    members: list[list[list[float]]] = []
    k = num_candidates
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling candidates", unit="batch"):
        chunk = [p for p in prompts[start : start + batch_size] for _ in range(k)]
        answers = sampler.generate(chunk)
        each = sampler.member_scores(chunk, answers.texts)
        rewards = sampler.aggregate(each).tolist()
        for i in range(0, len(chunk), k):
            texts.append(answers.texts[i : i + k])
            scores.append(rewards[i : i + k])
            members.append(each[:, i : i + k].tolist())
    return texts, scores, members
