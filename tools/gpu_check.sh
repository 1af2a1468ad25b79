#!/usr/bin/env bash
# The prepared GPU check (docs/backends.md): keras_preact on Keras' JAX backend, on a machine
# that has JAX (with CUDA) but no TensorFlow and no network. Two steps:
#
#   bash tools/gpu_check.sh --prepare      # here (PyPI reachable): wheels into runs/gpu_wheels/
#   bash tools/gpu_check.sh [--smoke] [--out DIR] [--wheels DIR]    # there: install and run
#
# --prepare builds the package's wheel and downloads Keras 3.15.1 and the two dependencies of
# Keras that a JAX image lacks (namex, optree; optree for CPython 3.10-3.13), about 4 MB. Carry
# runs/gpu_wheels with the working tree. The run installs them with no network (--no-index)
# into a folder of its own on PYTHONPATH (the image's JAX, NumPy, h5py, ml-dtypes, rich and
# absl-py are used as they are), then runs tools/gpu_check.py under a time limit of 9 minutes:
# ResNet-164 (batch 128) and ResNet-1001 (batch 64) in float32 and bfloat16, training and
# inference, a short fit of ResNet-20, and, where the image has PyTorch, Keras' PyTorch backend
# and native PyTorch on ResNet-164 (benchmarks/backends_table.py's cells); it writes
# gpu_check.json and gpu_check.md to --out
# (default runs/gpu_check). The same command runs on a CPU with JAX installed (--smoke: tiny
# cases, for tests).
set -euo pipefail
cd "$(dirname "$0")/.."

wheels=runs/gpu_wheels
out=runs/gpu_check
prepare=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) prepare=1 ;;
    --wheels) wheels="$2"; shift ;;
    --wheels=*) wheels="${1#*=}" ;;
    --out) out="$2"; shift ;;
    --out=*) out="${1#*=}" ;;
    *) args+=("$1") ;;
  esac
  shift
done
python="${PYTHON:-python3}"

if [ "$prepare" -eq 1 ]; then
  rm -rf "$wheels"
  mkdir -p "$wheels"
  "$python" -m pip wheel --quiet --no-deps -w "$wheels" .
  "$python" -m pip download --quiet --no-deps -d "$wheels" keras==3.15.1 namex==0.1.0
  for version in 3.10 3.11 3.12 3.13; do
    "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
      --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 optree==0.20.0
  done
  ls -l "$wheels"
  echo "gpu_check: carry $wheels with the working tree, then run: bash tools/gpu_check.sh"
  exit 0
fi

if [ ! -d "$wheels" ]; then
  echo "gpu_check: no wheels in $wheels: run 'bash tools/gpu_check.sh --prepare' where PyPI is reachable" >&2
  exit 2
fi
if ! "$python" -c "import jax" 2>/dev/null; then
  echo "gpu_check: $python has no JAX; the check runs Keras' JAX backend" >&2
  exit 2
fi
site="$(mktemp -d)/site"
"$python" -m pip install --quiet --no-index --no-deps --find-links "$wheels" --target "$site" \
  keras==3.15.1 namex optree keras_preact
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
echo "gpu_check: Keras and keras_preact installed from $wheels into $site"
timeout 540 "$python" tools/gpu_check.py --out "$out" "${args[@]+"${args[@]}"}"
