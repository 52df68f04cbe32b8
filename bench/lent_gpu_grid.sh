#!/usr/bin/env bash
# Part of a grid in one call on a lent GPU machine whose disk does not outlive the call
# (docs/repro.md, "On a GPU lent in short calls"): set up from what the call carried, run
# node_grid commands side by side into a copy of the grid's committed store under $OUT, and
# leave there what must come back (the store, the logs, the compile cache), compressed: a call
# returns at most 8 files of at most 16 MiB each, and the store outgrows that after ~300 cells.
#
#   bash bench/lent_gpu_grid.sh EXPERIMENT DEADLINE_S "OVERRIDES" ["OVERRIDES" ...]
#   bash bench/lent_gpu_grid.sh repro 450 "grid=repro model=mini-s tokens_per_param=80" \
#       "grid=repro-fused model=mini-xs tokens_per_param=320"
#
# Carried (ignored by git): .whl/ (bench/device_wheels.sh), .bench_data/ (the bundled-large
# shards as a tar.xz), and .inductor_cache.tar.gz if an earlier call left one in $OUT (copy it
# to the repository root: a warm cache saves each process most of its compile time, and the
# fake-quant kernel its build).
# Back here: gunzip -c <files_at>/mlflow.db.gz >/tmp/call.db
#   python -m qat.merge_runs --experiment EXPERIMENT --into results/EXPERIMENT/mlflow.db /tmp/call.db
set -u
if [ $# -lt 3 ]; then
  echo "usage: bash bench/lent_gpu_grid.sh EXPERIMENT DEADLINE_S OVERRIDES [OVERRIDES ...]" >&2
  exit 2
fi
experiment=$1
deadline=$2
shift 2
: "${OUT:?OUT must name the folder that comes back}"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/data && tar xJf .bench_data/bundled-large-v4096.tar.xz -C /tmp/data
export QAT_DATA_DIR=/tmp/data TORCH_CUDA_ARCH_LIST=9.0a
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
# The fake-quant extension's build rides in the same archive: a carried build is imported as it
# is (qat.quant.kernels.build), where each process on a bare machine would run nvcc again.
export QAT_KERNEL_CACHE=$TORCHINDUCTOR_CACHE_DIR/qat-kernels
mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
if [ -f .inductor_cache.tar.gz ]; then tar xzf .inductor_cache.tar.gz -C "$TORCHINDUCTOR_CACHE_DIR"; fi

# Start from the finished cells already committed, so node_grid skips them.
if [ -f "results/$experiment/mlflow.db.gz" ]; then
  gunzip -c "results/$experiment/mlflow.db.gz" >"$OUT/mlflow.db"
fi
store="sqlite:///$OUT/mlflow.db"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 20 >"$OUT/gpu.csv" 2>&1 &
monitor=$!

pids=()
index=0
for overrides in "$@"; do
  # shellcheck disable=SC2086  # each argument is a list of Hydra overrides
  python3 -m qat.node_grid $overrides trainer=packed trainer.compile=true \
    "tracking.uri=$store" --gpus 1 --deadline "$deadline" --log-dir "$OUT/logs$index" \
    >"$OUT/grid$index.out" 2>&1 &
  pids+=($!)
  index=$((index + 1))
  sleep 3 # the first process creates the store's tables alone
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill "$monitor" 2>/dev/null
for out in "$OUT"/grid*.out; do echo "== $out"; tail -n 2 "$out"; done
# The library alone of the extension's build: its objects are not needed to import it.
tar czf "$OUT/inductor_cache.tar.gz" --exclude='*.o' -C "$TORCHINDUCTOR_CACHE_DIR" .
# logs[0-9]*, not logs*: the archive itself is named logs.tar.gz
(cd "$OUT" && tar czf logs.tar.gz logs[0-9]* grid*.out gpu.csv && rm -rf logs[0-9]* grid*.out gpu.csv)
gzip -9 "$OUT/mlflow.db"
exit $status
