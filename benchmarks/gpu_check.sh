#!/usr/bin/env bash
# One prepared GPU check (issue 20, item 4), about 8 minutes on one H100/H200:
#   1. install what it needs (the package with its ray extra), 2. the CUDA tests,
#   3. `powersteer run` of a small organism sweep on cuda, 4-5. the Qwen3-1.7B- and
#   Qwen3-8B-shaped random-weight maps of bench_map_gpu.py (bf16, k = 12, one 64-token
#   prompt), 6. the same run with two Ray actors sharing the one GPU; then one table.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # tiny sizes on the CPU: checks the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0; [[ "${1:-}" == "--dry-run" ]] && DRY=1
WORK=$(mktemp -d)
TABLE="$WORK/table.tsv"
if (( DRY )); then
  DEVICE=cpu; MAP_ARGS=(--layers 2 --dtype float32 -k 2 --tokens 8 --max-iter 3); LIMIT=4
else
  DEVICE=cuda; MAP_ARGS=(--dtype bfloat16 -k 12 --tokens 64 --max-rows 128); LIMIT=32
fi

step() {  # step NAME LOG-PATTERN COMMAND...: run it, time it, keep the matching lines
  local name=$1 pattern=$2; shift 2
  local log="$WORK/$name.log" start end status
  start=$(date +%s.%N)
  if "$@" >"$log" 2>&1; then status=ok; else status="FAILED ($?)"; fi
  end=$(date +%s.%N)
  printf '%s\t%s\t%.1f\t%s\n' "$name" "$status" "$(echo "$end - $start" | bc)" \
    "$(grep -E "$pattern" "$log" | tr '\n' ' ' | cut -c1-160)" >>"$TABLE"
  [[ $status == ok ]] || tail -20 "$log"
}

python3 - "$WORK/behavior.yaml" "$LIMIT" <<'PY'
import sys, yaml, pathlib
root = pathlib.Path("behaviors/organism")
data = yaml.safe_load((root / "anti_refusal.yaml").read_text())
for section in ("prompts", "contrast"):
    if section in data:
        data[section]["path"] = str((root / data[section]["path"]).resolve())
        data[section]["limit"] = int(sys.argv[2])
data["steering"].update(methods=["power", "random", "caa"], num_vectors=2, scales=[0, 1, 2])
data["generation"]["max_new_tokens"] = 16
pathlib.Path(sys.argv[1]).write_text(yaml.safe_dump(data))
PY

if (( DRY )); then
  printf 'install\tskipped (dry run)\t0\t\ncuda-tests\tskipped (dry run)\t0\t\n' >>"$TABLE"
else
  step install "Successfully|already" python3 -m pip install --quiet -e ".[dev,ray]"
  step cuda-tests "passed|failed" python3 -m pytest -q -k cuda -p no:cacheprovider tests
fi
CLI=(python3 -m harness.integrations.cli run "$WORK/behavior.yaml" --device "$DEVICE")
step run-local "cells computed" "${CLI[@]}" --out "$WORK/local"
step map-qwen3-1.7b "wall time|TFLOP|peak memory" \
  python3 benchmarks/bench_map_gpu.py --config qwen3-1.7b --device "$DEVICE" "${MAP_ARGS[@]}"
step map-qwen3-8b "wall time|TFLOP|peak memory" \
  python3 benchmarks/bench_map_gpu.py --config qwen3-8b --device "$DEVICE" "${MAP_ARGS[@]}"
GPU_SHARE=(); (( DRY )) || GPU_SHARE=(--gpus-per-worker 0.5)
step run-ray-2-workers "cells computed" \
  "${CLI[@]}" --out "$WORK/ray" --executor ray --workers 2 "${GPU_SHARE[@]}"
step ray-equals-local "equal" python3 -c "
import pandas as pd, sys
a, b = (pd.read_parquet(f'$WORK/{d}/results.parquet') for d in ('local', 'ray'))
pd.testing.assert_frame_equal(a, b); print('results.parquet equal')"

echo
column -t -s $'\t' -N step,status,wall_s,figures "$TABLE" 2>/dev/null || cat "$TABLE"
! grep -q FAILED "$TABLE"
