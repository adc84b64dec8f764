"""Does FSDP2 sharding keep the model? Sharded vs unsharded, on the same process, for each base precision.

Run under torchrun (2+ processes; gloo on CPU, nccl on GPUs):

    torchrun --nproc_per_node 2 scripts/fsdp_check.py 4bit:uint8 4bit:float32 none

Each variant (``4bit:<bnb_4bit_quant_storage>`` or ``none`` for the full-precision base) loads the
built-in tiny model twice through ``rlhf.models`` with a LoRA on every linear layer, shards one copy
with :func:`rlhf.sharding.shard`, and prints one JSON line per process: the largest logit
difference, the greedy answers of both, the largest gradient difference through the LoRA before and
after an AdamW step (both see the same batch on every process, so FSDP's averaged gradient is the
unsharded one), the largest weight difference after the step, and the share of the sharded weights
this process holds.

``--unsafe-cpu-kernel`` turns bitsandbytes' CPU inference kernel back on after sharding: the
reproduction of the corruption :mod:`rlhf.sharding` prevents (on CPUs with AVX512-BF16).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft import LoraConfig, PeftModel, get_peft_model

from rlhf import distributed, models, sharding
from rlhf.arguments import ModelArguments

PROMPT = [{"role": "user", "content": "What is 3 plus 4?"}]


def load(variant: str) -> tuple[PeftModel, Any]:
    quantization, _, storage = variant.partition(":")
    args = ModelArguments(
        model_name_or_path="builtin:tiny",
        quantization=quantization,
        dtype="float32",
        bnb_4bit_compute_dtype="float32",
        use_bnb_nested_quant=True,
        bnb_4bit_quant_storage=storage or None,
    )
    tokenizer = models.load_tokenizer(args)
    torch.manual_seed(0)
    base = models.load_causal_lm(args, tokenizer)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, lora, adapter_name="policy"), tokenizer


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def step(model: PeftModel, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Forward and backward of the batch's language-model loss; the logits."""
    optimizer.zero_grad(set_to_none=True)
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    return out.logits.detach()


def answer(model: PeftModel, tokenizer: Any, batch: dict[str, torch.Tensor]) -> str:
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    return str(tokenizer.decode(out[0, batch["input_ids"].shape[1] :]))


def largest(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((sharding.full(a[k]) - b[k]).abs().max()) for k in a)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in trainable(model).items() if p.grad is not None}


def check(variant: str, unsafe_cpu_kernel: bool) -> dict[str, Any]:
    reference, tokenizer = load(variant)
    model, _ = load(variant)
    sharding.shard(model, model.get_base_model())
    if unsafe_cpu_kernel:
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = True
    batch = dict(
        tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    )
    out: dict[str, Any] = {"variant": variant, "rank": dist.get_rank()}
    for name, m in (("reference", reference), ("sharded", model)):
        m.eval()
        out[f"{name}_answer"] = answer(m, tokenizer, batch)
    optimizers = [torch.optim.AdamW(trainable(m).values(), lr=1e-2) for m in (reference, model)]
    diffs = []
    for _ in range(2):  # the second pass sees the stepped LoRA, whose A and B both get gradients
        logits = [step(m, batch, opt) for m, opt in zip((reference, model), optimizers, strict=True)]
        diffs.append(
            {"logits": float((logits[1] - logits[0]).abs().max()), "grads": largest(grads(model), grads(reference))}
        )
        for opt in optimizers:
            opt.step()
    out["logit_diff"] = max(d["logits"] for d in diffs)
    out["grad_diff"] = max(d["grads"] for d in diffs)
    out["grad_scale"] = max(float(g.abs().max()) for g in grads(reference).values())
    out["weight_diff"] = largest(trainable(model), trainable(reference))
    local, total = sharding.local_share(model)
    out["share"] = local / total
    out["answer_after_step"] = answer(model.eval(), tokenizer, batch) == answer(reference.eval(), tokenizer, batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="4bit:<quant storage> (uint8, float32, bfloat16) or none")
    parser.add_argument("--unsafe-cpu-kernel", action="store_true", help="reproduce the corruption")
    parser.add_argument("--out", type=Path, help="also write each process's lines to OUT/rank-<rank>.jsonl")
    args = parser.parse_args()
    distributed.init_from_env()
    for variant in args.variants:
        started = time.time()
        line = json.dumps({**check(variant, args.unsafe_cpu_kernel), "seconds": round(time.time() - started, 1)})
        print(line, flush=True)
        if args.out is not None:
            with (args.out / f"rank-{dist.get_rank()}.jsonl").open("a") as handle:
                handle.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
