"""Candidates to annotate: K sampled responses per prompt from a base model or a LoRA adapter on it.

``rlhf feedback generate --model runs/tiny/sft/merged --prompts prompts.jsonl --num-candidates 4``
(or ``--model builtin:tiny --adapter runs/tiny/sft``). The model is loaded by the policy service's
loader (:func:`rlhf.policy.loading.load_roles`, as the training stages load it: the base with a
policy LoRA, an adapter's weights loaded into it; its tokenizer is used when it saved one) and
sampled by the service's one :class:`~rlhf.policy.sampler.PolicySampler`, as RL, evaluation and
the pipeline's later rounds (:func:`propose`) sample: each prompt repeated K times, rendered with
the model's chat template (generation prompt added), left-padded, answered through the rollout
engine (temperature / top-p / top-k as given, nothing inherited from the checkpoint's saved
generation config) until any of the model's EOS ids or ``max_new_tokens``. Only prompts that
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
from peft import LoraConfig, PeftConfig
from tqdm.auto import tqdm

from feedback import importer
from feedback.records import Messages
from feedback.store import Conflict, Store
from rlhf.arguments import ModelArguments
from rlhf.policy import loading, sampling
from rlhf.policy.config import ScoringConfig
from rlhf.policy.roles import POLICY
from rlhf.policy.sampler import PolicySampler
from rlhf_core.errors import ConfigError

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
        """What the sampler draws each answer with (``num_candidates``: how often each prompt is repeated)."""
        return sampling.SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.top_k)


@dataclass
class GenerateReport:
    prompts: int = 0
    sampled: int = 0
    stored: int = 0  # distinct non-empty samples (a sample already in the store keeps its id)
    duplicates: int = 0
    empty: int = 0
    skipped_in_use: int = 0  # prompts already handed out or answered: their candidate set is fixed


def load(
    model: str, adapter: str | None = None, quantization: str = "none", settings: GenerationSettings | None = None
) -> PolicySampler:
    """The sampler of the model, with the adapter's LoRA as its policy (without one: the model itself).

    Loaded by the policy service's loader, the LoRA shaped as the adapter saved it (rank, alpha, target
    modules), so its weights fit; the adapter's tokenizer is used when it saved one. Without an adapter
    the policy LoRA stays zero and :func:`generate` samples with it disabled (``reference``).
    """
    settings = settings or GenerationSettings()
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else None
    args = ModelArguments(model_name_or_path=model, tokenizer_name_or_path=tokenizer_source, quantization=quantization)
    lora = None
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(
                f"adapter: {adapter}: no adapter_config.json; name a LoRA adapter folder (an sft, ppo, dpo or kto "
                "run), or pass a merged model as --model"
            )
        lora = PeftConfig.from_pretrained(adapter)
        if not isinstance(lora, LoraConfig):
            raise ConfigError(f"adapter: {adapter} is a {lora.peft_type} adapter; candidates come from LoRA ones")
        if lora.task_type not in (None, "CAUSAL_LM"):
            raise ConfigError(
                f"adapter: {adapter} is a {lora.task_type} adapter (a reward model's); candidates come from a policy: "
                "an sft, ppo, dpo or kto run"
            )
    # no precision options: float32 (a 4-bit base computes in float32), as sampling without autocast needs
    roles, tokenizer = loading.load_roles(args, ScoringConfig(), None, seed=settings.seed, policy_lora=lora)
    if adapter:
        roles.load_adapter(POLICY, adapter)
    # The base alone, unquantized, is sampled through a merged copy that shares its float32 weights (the
    # adapters are disabled): free, where ``auto`` prices one float32 matrix per LoRA layer of the zero policy.
    rollout_engine = "merged" if adapter is None and quantization == "none" else "auto"
    return PolicySampler(roles, tokenizer, settings.drawn(), rollout_engine=rollout_engine)


def sample_sets(
    sampler: PolicySampler, prompts: Sequence[Messages], k: int, reference: bool = False
) -> list[list[str]]:
    """``k`` answers to each prompt, sampled as one batch of the prompts each repeated ``k`` times.

    Rows are prompt 0's ``k`` answers, then prompt 1's... (as GRPO groups them); ``reference``
    samples with every adapter disabled (the model without its policy LoRA).
    """
    texts = sampler.generate([p for p in prompts for _ in range(k)], reference=reference).texts
    return [texts[i : i + k] for i in range(0, len(texts), k)]


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
    sampler = load(model, adapter, quantization, settings)
    generation = asdict(settings)
    torch.manual_seed(settings.seed)
    for start in tqdm(range(0, len(todo), batch_size), desc="generating", unit="batch"):
        chunk = todo[start : start + batch_size]
        prompts = [messages for _, messages in chunk]
        samples = sample_sets(sampler, prompts, settings.num_candidates, reference=adapter is None)
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

    Sampled as round 1's candidates are (:func:`sample_sets`, the policy's settings and EOS ids) and
    scored as PPO scores them: the candidates a later round of the pipeline chooses from.
    """
    texts: list[list[str]] = []
    scores: list[list[float]] = []
    members: list[list[list[float]]] = []
    k = num_candidates
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling candidates", unit="batch"):
        part = prompts[start : start + batch_size]
        sets = sample_sets(sampler, part, k)
        each = sampler.member_scores([p for p in part for _ in range(k)], [t for answers in sets for t in answers])
        rewards = sampler.aggregate(each).tolist()
        for i, answers in zip(range(0, len(rewards), k), sets, strict=True):
            texts.append(answers)
            scores.append(rewards[i : i + k])
            members.append(each[:, i : i + k].tolist())
    return texts, scores, members
