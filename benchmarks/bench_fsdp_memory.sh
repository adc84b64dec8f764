#!/bin/bash
# Per-process peak RSS of PPO on the random-weight Qwen2.5-0.5B shape: one process (rollout_engine
# transformers, then merged) against two gloo processes sharded with --fsdp full_shard.
#
#   python benchmarks/bench_ppo.py --skip-speed --skip-trl-memory --workdir runs/bench-ppo   # the model and reward run
#   bash benchmarks/bench_fsdp_memory.sh runs/bench-ppo runs/bench-fsdp
#
# The settings are bench_ppo.py's memory run (fp32 + LoRA r16, 2 iterations of 4 prompts, 32 new tokens),
# one thread per process. Each process's peak RSS is GNU time's %M (KiB); the sharded run's metrics.jsonl
# has each process's share of the parameters and optimizer state (fsdp/param_share).
set -euo pipefail
bench=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
export OMP_NUM_THREADS=1
args=(--config recipes/tiny/ppo.yaml --model_name_or_path "$bench/random-qwen2.5-0.5b"
  --reward_model_path "$bench/memory-reward" --quantization none --dtype float32 --lora_r 16 --lora_alpha 32
  --learning_rate 0.0003 --temperature 1.0 --seed 42 --eval_max_prompts 0 --gold_judge "" --save_steps 10000
  --disable_tqdm true --steps 2 --rollout_batch_size 4 --mini_batch_size 4 --ppo_epochs 1 --max_new_tokens 32
  --forward_batch_size 4)
for engine in transformers merged; do
  rm -rf "${out:?}/one-$engine"
  /usr/bin/time -f %M -o "$out/one-$engine.kib" python -m rlhf ppo "${args[@]}" --rollout_engine "$engine" \
    --output_dir "$out/one-$engine" > "$out/one-$engine.log" 2>&1
done
rm -rf "${out:?}/two"
# shellcheck disable=SC2016  # $LOCAL_RANK is expanded by each process's shell, not here
torchrun --nproc_per_node 2 --master_port 29611 --no-python bash -c \
  '/usr/bin/time -f %M -o "$0/two-rank$LOCAL_RANK.kib" python -m rlhf ppo "$@" --output_dir "$0/two" --fsdp full_shard' \
  "$out" "${args[@]}" > "$out/two.log" 2>&1
printf '%-36s %14s %12s %12s\n' run "peak RSS MiB" "generate s" "update s"
for run in one-transformers one-merged two-rank0 two-rank1; do
  folder=$out/${run%-rank*}
  read -r gen upd < <(python -c 'import json,sys; h=[json.loads(l) for l in open(sys.argv[1])];
print(sum(r["time/generate"] for r in h), sum(r["time/update"] for r in h))' "$folder/metrics.jsonl")
  printf '%-36s %14d %12.1f %12.1f\n' "$run" $(($(tail -1 "$out/$run.kib") / 1024)) "$gen" "$upd"
done
python -c 'import json,sys; print("fsdp/param_share:", json.loads(open(sys.argv[1]).readlines()[-1])["fsdp/param_share"])' "$out/two/metrics.jsonl"
