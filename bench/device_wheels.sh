#!/usr/bin/env bash
# Fill .whl/ with the wheels the offline GPU machine lacks. That machine has Python 3.12 (x86_64,
# manylinux), torch and a broad scientific stack (numpy, pandas, pyyaml, requests, protobuf, anyio,
# click, cloudpickle, markupsafe, annotated-doc, msgpack, ninja, psutil, py-cpuinfo, einops,
# nvidia-ml-py, ...), but no Hydra, MLflow or DeepSpeed. There:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
# makes `python3 train.py -m grid=smoke` (SQLite MLflow store), `python3 -m analysis.collect` and
# `deepspeed.initialize(...)` work. Idempotent: wheels already in .whl/ are kept, stale ones removed.
#
# Why this set (each checked by removing it and re-running): mlflow-skinny alone holds the tracking
# client, the SQLAlchemy store and its alembic migrations; the full `mlflow` wheel only adds the
# web UI (~8 MB of JS) and mlflow-tracing is a subset of mlflow-skinny, so neither is here.
# `import mlflow` still needs fastapi/starlette (mlflow.gateway), databricks-sdk (a find_spec of
# databricks.agents), opentelemetry-*, cachetools, sqlparse (search filters), and the SQLite
# store needs cryptography+cffi (model-registry tables) and alembic+mako (schema migration).
# Not needed: uvicorn, flask, gitpython, python-dotenv, submitit.
set -euo pipefail
cd "$(dirname "$0")/.."
WHL=.whl
PY=${PY:-.venv/bin/python}   # a Python with torch + setuptools, for the two sdist-only builds
mkdir -p "$WHL"

# The name==version that pyproject.toml pins (core dependencies and extras alike).
pin() {
  local spec
  spec=$(grep -oE "\"$1==[^\"]+\"" pyproject.toml | tr -d '"')
  [ -n "$spec" ] || { echo "no $1==<version> in pyproject.toml" >&2; exit 1; }
  echo "$spec"
}

# name==version: pyproject.toml's pins, and .venv's versions for the rest.
PINS=(
  # Hydra; hydra-submitit-launcher only so that Hydra's plugin scan can import
  # hydra_plugins/qat_launcher without a warning (submitit itself is imported only for SLURM).
  "$(pin hydra-core)" omegaconf==2.3.1 "$(pin hydra-submitit-launcher)"
  # MLflow tracking client + SQLite store
  mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 sqlparse==0.6.1
  cachetools==7.3.2 importlib-metadata==9.1.0 fastapi==0.165.0 starlette==1.10.0
  databricks-sdk==0.156.0
  cryptography==50.0.2 cffi==2.1.1
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  # pydantic (MLflow, fastapi, DeepSpeed's config) and DeepSpeed's hjson
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  hjson==3.1.0
)
# sdist-only on PyPI: built here into pure-Python wheels. DS_BUILD_OPS=0: no op is prebuilt,
# DeepSpeed JIT-builds what it needs on the device (nvcc + ninja are there).
BUILD=(antlr4-python3-runtime==4.9.3 "$(pin deepspeed)")

prefix() { local n=${1%%==*}; echo "$(echo "$n" | tr 'A-Z-' 'a-z_')-${1##*==}-"; }  # wheel name
have() { compgen -G "$WHL/$(prefix "$1")*.whl" >/dev/null; }
quiet() { grep -v '^WARNING: Location' || true; }  # this machine's pip config names absent indexes

for spec in "${PINS[@]}"; do
  have "$spec" || "$PY" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" "$spec" 2>&1 | quiet
done
for spec in "${BUILD[@]}"; do
  have "$spec" || DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation \
    --no-binary=:all: -w "$WHL" "$spec" 2>&1 | quiet
done

# Exactly one wheel per pin: drop leftovers of older pins, fail on a missing one.
for f in "$WHL"/*.whl; do
  keep=0
  for spec in "${PINS[@]}" "${BUILD[@]}"; do [[ $(basename "$f") == $(prefix "$spec")* ]] && keep=1; done
  [ $keep = 1 ] || { echo "removing stale $f"; rm -f "$f"; }
done
for spec in "${PINS[@]}" "${BUILD[@]}"; do have "$spec" || { echo "missing: $spec" >&2; exit 1; }; done
echo "$(ls "$WHL"/*.whl | wc -l) wheels, $(du -cb "$WHL"/*.whl | tail -1 | awk '{printf "%.1f MB", $1/1e6}') in $WHL"
