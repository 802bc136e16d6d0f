#!/usr/bin/env bash
# Every GPU figure of the README's Performance section, in one run (under 5 minutes on an H200):
#   1. seconds per training step against the hand-written floor at batch 128 and 1024, for the
#      Pyro program run eagerly (--capture off), the recorded graph, torch.compile and CUDA
#      graphs (lines "ratio cuda batch=<B> meanfield[+mode] <ratio>", compilation in "setup");
#   2. a 60,000-image epoch of fit() against the hand-written epoch at batch 128 and 1024, with
#      the recorded graph, compiled and as CUDA graphs (lines "epoch-ratio ...[+mode]"; the
#      seconds in the table: target < 1 s at batch 128; compilation is cached by then), each
#      built-in model against its own Pyro program ("model-ratio ..."), and the memory of
#      three epochs of fit() ("epoch cuda 60000x784 ...");
#   3. importance-sampled log p(x) with K = 5000 on the 10,000 MNIST test images within an
#      8 GiB budget (target < 30 s), against a hand-written sampler ("eval-ratio ...") and the
#      matmul roofline ("eval-roofline ...").
#
# usage: bash benchmarks/gpu.sh          # on a machine with CUDA
#        bash benchmarks/gpu.sh --dry    # the same commands at toy sizes on the CPU (a check)
# PYTHON overrides the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if [[ "${1:-}" == "--dry" ]]; then
    device=cpu
    train_sizes=(--batch-sizes 16 --hidden 16 --latent-dim 2 --rounds 1 --steps 2 --warmup 1
        --epoch-images 512 --epoch-rounds 1 --model-rounds 1 --epoch-epochs 1 --threads 1)
    eval_sizes=(--num 20 --iw-samples 10 --train-epochs 0 --race-num 20 --race-rounds 1
        --peak-rows 500 --memory-budget-mb 1)
else
    device=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    train_sizes=(--batch-sizes 128 1024 --rounds 10 --steps 20 --warmup 10
        --epoch-images 60000 --epoch-rounds 3 --model-rounds 5 --epoch-epochs 3)
    eval_sizes=(--num 10000 --iw-samples 5000 --train-epochs 1 --race-num 1000 --race-rounds 3
        --memory-budget-mb 8192)
fi

start=$SECONDS
echo "# 1-2. steps, epochs, models ($device)"
"$PY" benchmarks/bench_train.py --device "$device" --estimators meanfield \
    --capture graph off compile cudagraph --epoch-capture graph compile cudagraph \
    "${train_sizes[@]}"
echo "# 3. importance-sampled log p(x) ($device)"
"$PY" benchmarks/bench_evaluate.py --device "$device" "${eval_sizes[@]}"
echo "# gpu.sh took $((SECONDS - start)) s"
