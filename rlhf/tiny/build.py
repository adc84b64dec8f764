"""Build the tiny base model of the built-in task: a real tokenizer and a small Llama, pre-trained here.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with the `tokenizers` library on
the task's text and wrapped in `PreTrainedTokenizerFast`; the model is a `LlamaForCausalLM` with
the projections real models have (q/k/v/o, gate/up/down), grouped-query attention and tied
embeddings, so the 4-bit and LoRA code paths are the ones real models take.

The chat template is ChatML with `{% generation %}` markers around the assistant's content *and*
its end-of-turn token, so assistant-only loss also teaches the model to stop. `pad` is its own token
(pad == eos would mask EOS out of the losses and break "did it stop?" detection).

`scripts/build_tiny_model.py` runs :func:`build`; the result is committed under
``rlhf/tiny/model`` with a manifest of the settings and file hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.tiny import corpus

MODEL_DIR = Path(__file__).parent / "model"

EOS = "<|im_end|>"
PAD = "<|pad|>"
DOC_SEP = "<|endoftext|>"
SPECIAL_TOKENS = [DOC_SEP, "<|im_start|>", EOS, PAD]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Measured choices (scripts/build_tiny_model.py, 2 CPU cores): hidden 128 builds in ~4.5 minutes
# and learns the task (99% of "a plus b is" facts greedy; SFT reaches the demonstrations' gold
# score); hidden 256 was 2.5x slower at every later stage for no gain the task needs.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 640,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "documents": 40_000,
    "steps": 1200,
    "batch_size": 64,
    "seq_len": 64,
    "learning_rate": 3e-3,
    "seed": 0,
}


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the task's text: every word of the task becomes one or two tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[DOC_SEP, "<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=DEFAULTS["max_position_embeddings"],
        padding_side="right",
    )


def render(doc: dict[str, Any], tokenizer: PreTrainedTokenizerFast | None = None) -> str:
    """A pre-training document as text: prose as is, chats through the chat template."""
    if "text" in doc:
        return doc["text"]
    if tokenizer is not None:
        return tokenizer.apply_chat_template(doc["messages"], tokenize=False)
    # Before the tokenizer exists: same layout, so BPE sees the real chat text.
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}{EOS}\n" for m in doc["messages"])


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """All documents as one stream of ids, separated by the document separator."""
    sep = tokenizer.convert_tokens_to_ids(DOC_SEP)
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(sep)
    return torch.tensor(ids, dtype=torch.long)


def pretrain(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    learning_rate: float,
    seed: int,
) -> list[float]:
    """Next-token pre-training on random windows of the stream, AdamW with warm-up and cosine decay."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="pre-training tiny base", unit="step")
    for _ in bar:
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def build(output_dir: Path = MODEL_DIR, **overrides: Any) -> dict[str, Any]:
    """Build tokenizer and model into ``output_dir`` and return the manifest written beside them."""
    settings = {**DEFAULTS, **overrides}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown build settings: {sorted(unknown)}")
    random.seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    started = time.time()

    docs = corpus.pretraining_documents(settings["documents"], seed=settings["seed"])
    tokenizer = train_tokenizer([render(d) for d in docs], settings["vocab_size"])
    texts = [render(d, tokenizer) for d in docs]
    stream = token_stream(texts, tokenizer)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    losses = pretrain(
        model,
        stream,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        seq_len=settings["seq_len"],
        learning_rate=settings["learning_rate"],
        seed=settings["seed"],
    )
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=48,
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    manifest = {
        "settings": settings,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_in_corpus": len(stream),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "build_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "files": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(output_dir.iterdir())
            if p.is_file() and p.name != "manifest.json"
        },
    }
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
