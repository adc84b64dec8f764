"""Rollout generation speed: plain ``generate()`` against faster paths, same prompts, same settings, one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py                      # tiny model, fp32 and 4-bit bases
    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py --compile            # + static cache with torch.compile
    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py --shape qwen2.5-0.5b --prompts 8 --max-new-tokens 32

The policy is what PPO samples from: a LoRA (r 16, alpha 32, all linear layers, as the recipes) on the
base, given a random update so it is not the base. Paths, each timed on the same left-padded prompts
(``builtin:tiny/prompts``, chat template applied) with the same seed:

* ``generate``: ``TransformersEngine``, today's reference (``model.generate()`` on the PEFT model);
* ``generate static``: the same with ``cache_implementation="static"``;
* ``generate static+compile`` (``--compile``): and the forward compiled by ``torch.compile`` (inductor);
  its one-off compile time is the first call, not in the rate; full-precision bases only (generate()
  skips compiling a bitsandbytes model);
* ``decode loop``: :func:`rlhf.policy.engine.decode` (generate()'s sampling step without its machinery) on the
  same PEFT model;
* ``merged``: ``MergedEngine``: the decode loop on a float32 copy with the LoRA merged (and a 4-bit base
  dequantized); each timed rollout includes the ``sync()`` that refreshes the copy, as every PPO
  iteration does.

Speed is answer tokens (up to and including EOS; "answer tokens": their mean per rollout) per second
of this process's CPU time: the machine is shared, and wall time moves with other jobs' load (it is
printed too), while one thread's CPU time is the work done. Paths take turns, ``--repeats`` rounds
after one untimed warm-up each, each round with another seed (the same for every path); the medians
of CPU seconds, wall seconds and tokens per CPU second (with its range) are reported.
The ``generate`` paths draw with ``torch.multinomial``, the decode loop with :func:`rlhf.policy.engine.draw`:
the same distribution (``tests/test_engine.py``), other tokens for the same seed. The machine's load
average is printed with the table; only ratios measured in the same run are compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from bench_ppo import ARCHITECTURES, _table, build_random_model

from rlhf import data, models
from rlhf.arguments import ModelArguments
from rlhf.policy import engine, sampling


def load_policy(model: str, quantization: str) -> tuple[Any, Any]:
    """The base as the PPO stage loads it, with a policy LoRA that has moved (B != 0), and its tokenizer."""
    from peft import get_peft_model

    args = ModelArguments(model_name_or_path=model, quantization=quantization, lora_r=16, lora_alpha=32)
    models.resolve_dtypes(args)
    tokenizer = models.load_tokenizer(args)
    base = models.load_causal_lm(args, tokenizer)
    lora = models.lora_config(args, "CAUSAL_LM")
    assert lora is not None
    lora.lora_dropout = 0.0
    policy = get_peft_model(base, lora).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    return policy, tokenizer


def static_generate(compile_forward: bool) -> Callable[..., torch.Tensor]:
    """``generate()`` as :func:`rlhf.policy.sampling.sample` calls it, with a static KV cache (and compiled forward)."""
    from transformers import CompileConfig

    def run(model, query, mask, settings, eos_ids, pad) -> torch.Tensor:  # type: ignore[no-untyped-def]
        config = sampling.generation_config(settings, eos_ids, pad)
        config.cache_implementation = "static"
        if compile_forward:
            compiled = CompileConfig(fullgraph=False, mode="default", dynamic=False)
            compiled._compile_all_devices = True  # generate() compiles on accelerators only unless told
            config.compile_config = compiled
        else:
            config.disable_compile = True
        with sampling._no_saved_defaults(model):
            out = model.generate(input_ids=query, attention_mask=mask, generation_config=config)
        return out[:, query.shape[1] :]

    return run


PATHS = ("generate", "generate static", "generate static+compile", "decode loop", "merged")


def paths(policy: Any, eos_ids: list[int], pad: int, compile_forward: bool) -> dict[str, Callable[..., Any]]:
    """Each path as a function of (query, mask, settings) -> answer tokens, cut at EOS."""
    merged = engine.MergedEngine(policy, eos_ids, pad)
    merged.sync()  # the first sync builds the copy; a timed rollout refreshes it, as each iteration does

    def cut(tokens: torch.Tensor) -> torch.Tensor:
        return sampling.cut_at_eos(tokens, eos_ids, pad)[0]

    def rollout_of(sample: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda query, mask, settings: cut(sample(policy, query, mask, settings, eos_ids, pad))

    def merged_rollout(query: torch.Tensor, mask: torch.Tensor, settings: sampling.SamplingSettings) -> torch.Tensor:
        merged.sync()
        return merged.generate(query, mask, settings).tokens

    chosen: dict[str, Callable[..., Any]] = {
        "generate": rollout_of(sampling.sample),
        "generate static": rollout_of(static_generate(False)),
    }
    if compile_forward and getattr(sampling.generative(policy), "hf_quantizer", None) is None:
        chosen["generate static+compile"] = rollout_of(static_generate(True))  # transformers compiles no 4-bit model
    chosen["decode loop"] = rollout_of(lambda *args: engine.decode(*args)[0])
    chosen["merged"] = merged_rollout
    return chosen


def measure(model: str, quantization: str, args: argparse.Namespace) -> list[list[str]]:
    policy, tokenizer = load_policy(model, quantization)
    eos_ids = sampling.eos_token_ids(sampling.generative(policy), tokenizer)
    prompts = [row["prompt"] for row in data.load_split("builtin:tiny/prompts", "train")[0][: args.prompts]]
    query, mask = engine.encode_prompts(tokenizer, prompts, torch.device("cpu"))
    settings = sampling.SamplingSettings(args.max_new_tokens, args.temperature)
    runs = paths(policy, eos_ids, tokenizer.pad_token_id, args.compile)
    count = lambda t: int(sampling.cut_at_eos(t, eos_ids, tokenizer.pad_token_id)[1].sum())  # noqa: E731

    def once(name: str, seed: int) -> tuple[float, float, int]:
        """One rollout of a path: its CPU seconds, wall seconds and answer tokens."""
        torch.manual_seed(seed)
        cpu, wall = time.process_time(), time.perf_counter()
        with torch.no_grad():
            out = runs[name](query, mask, settings)
        return time.process_time() - cpu, time.perf_counter() - wall, count(out)

    runs = {name: run for name, run in runs.items() if name in args.paths}
    first_call = {}
    for name in runs:  # warm-up (and, with --compile, the compilation)
        first_call[name] = once(name, args.seed)[1]
        print(f"  {quantization:>4} {name}: first call {first_call[name]:.2f} s", flush=True)
    timed: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
    for round_ in range(args.repeats):  # another seed each round, the same for every path
        for name in timed:
            timed[name].append(once(name, args.seed + 1 + round_))
    rate = {name: statistics.median(n / cpu for cpu, _, n in rounds) for name, rounds in timed.items()}
    rows = []
    for name, rounds in timed.items():
        rates = [n / cpu for cpu, _, n in rounds]
        rows.append(
            [
                quantization,
                name,
                f"{statistics.median(cpu for cpu, _, _ in rounds):.3f}",
                f"{statistics.median(wall for _, wall, _ in rounds):.3f}",
                f"{rate[name]:.4g}",
                f"{min(rates):.4g}-{max(rates):.4g}",
                f"{rate[name] / rate['generate']:.2f}x",
                f"{statistics.fmean(n for _, _, n in rounds):.0f}",
                f"{first_call[name]:.1f}",
            ]
        )
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="tiny", choices=["tiny", *ARCHITECTURES], help="the model (random weights)")
    parser.add_argument("--quantization", nargs="+", default=["none", "4bit"], choices=["none", "4bit"])
    parser.add_argument("--prompts", type=int, default=64, help="answers per rollout (the tiny recipe's 64)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="the tiny recipe's 40")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time a static cache with torch.compile")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="the paths to time")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "bench-generation"))
    args = parser.parse_args(argv)
    if "generate" not in args.paths:
        parser.error("--paths: keep generate, the baseline every ratio is against")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = "builtin:tiny"
    if args.shape != "tiny":
        folder = Path(args.cache) / args.shape
        if not (folder / "config.json").is_file():
            print(f"building the random {args.shape} model in {folder}", flush=True)
            build_random_model(ARCHITECTURES[args.shape], str(folder))
        model = str(folder)
    rows = [row for quantization in args.quantization for row in measure(model, quantization, args)]
    header = ["base", "path", "CPU s", "wall s", "tokens/CPU s", "range", "vs generate", "answer tokens", "1st call s"]
    title = (
        f"{args.shape}: {args.prompts} prompts x up to {args.max_new_tokens} new tokens, temperature "
        f"{args.temperature}, LoRA r16 on all linear layers; median of {args.repeats}; torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(_table(title, header, rows))


if __name__ == "__main__":
    main()
