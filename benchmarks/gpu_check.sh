#!/usr/bin/env bash
# engine.device: cuda on the linear-head path and its gossip aggregation (issue 19), for a machine
# with a GPU (~9 minutes).
#
#   bash benchmarks/gpu_check.sh            # from the repository root; PYTHON=... picks the interpreter
#
# 1. which torch, and whether CUDA is usable: if not, says so and exits 0 (nothing measured);
# 2. tests/test_device.py and tests/test_device_aggregation.py (their CUDA tests run only here: a
#    CUDA run matches the CPU run up to rounding, checkpoints hold CPU tensors, every batched rule
#    on CUDA inputs matches its CPU result), if pytest is installed;
# 3. benchmarks/scale.py, peers x rounds per second of the round loop ("peer-rnd/s"): 10,000 peers
#    on cpu and on cuda in this same call (the baseline on the same machine), on cuda again with
#    engine.aggregate_chunk 1024 (64 suits a CPU's cache; a GPU wants fewer, larger rule calls),
#    then 100,000 peers (--replicate 4) on cuda and on cpu. Each step has its own time limit (seconds: T_TESTS,
#    T_10K, T_100K); ROUNDS_10K and ROUNDS_100K set the rounds. Results: printed, and JSON
#    under $OUT (or /tmp) as gpu_check_*.json.
set -u
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp}
ROUNDS_10K=${ROUNDS_10K:-10}
ROUNDS_100K=${ROUNDS_100K:-2}
T_TESTS=${T_TESTS:-90}
T_10K=${T_10K:-100}
T_100K=${T_100K:-150}

echo "# $(date -u) $(uptime)"
if ! "$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; then
    echo "gpu_check: torch is not importable with $PY: nothing measured"; exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch.cuda.is_available() is False: nothing measured"; exit 0
fi
if ! "$PY" -c 'import numpy, pydantic, yaml, psutil'; then
    echo "gpu_check: fedsim's dependencies (numpy, pydantic, pyyaml, psutil) are missing: nothing measured"; exit 0
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if "$PY" -c 'import pytest' 2>/dev/null; then
    timeout "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_device_aggregation.py
else
    echo "# pytest not installed: tests skipped"
fi

scale() {  # scale.py with the workload of docs/performance.md's 100,000-peer runs (float16 messages)
    local limit=$1 tag=$2; shift 2
    echo "# $(date -u +%T) $tag: $(uptime)"
    timeout "$limit" "$PY" benchmarks/scale.py --backend local --cpus-per-actor 1 --message-dtype float16 \
        --skip-breakdown --eval-every 1000 --json "$OUT/gpu_check_$tag.json" "$@" \
        || echo "# $tag: stopped (exit $?; 124 = its time limit)"
}
scale "$T_10K" 10k_cpu --sizes 10000 --rounds "$ROUNDS_10K" --device cpu
scale "$T_10K" 10k_cuda --sizes 10000 --rounds "$ROUNDS_10K" --device cuda
scale "$T_10K" 10k_cuda_chunk1024 --sizes 10000 --rounds "$ROUNDS_10K" --device cuda --aggregate-chunk 1024
scale "$T_100K" 100k_cuda --sizes 100000 --rounds "$ROUNDS_100K" --replicate 4 --device cuda
scale "$T_100K" 100k_cpu --sizes 100000 --rounds "$ROUNDS_100K" --replicate 4 --device cpu
echo "# $(date -u) done"
