#!/usr/bin/env bash
# Issue 22's GPU session in one command: experiments/gpu/run.sh OUTDIR [--dry-run] [run_gpu.py options]
# Writes OUTDIR/results.jsonl (one JSON line per measurement, as each finishes), OUTDIR/table.md, OUTDIR/run.log.
# What it measures, the budget and the device call: experiments/gpu/README.md.
set -u
export SSLJAX_GPU_T0=${SSLJAX_GPU_T0:-$(date +%s.%N)}  # the budget counts from here
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: experiments/gpu/run.sh OUTDIR [--dry-run] [--budget-s S] [--parts a,b] [--methods m,n]" >&2
  exit 2
fi
out=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
# Packages the GPU image lacks (or has at versions outside requirements.txt), from carried wheels (README.md).
wheels=${SSLJAX_WHEELS:-$root/.data/whl}
if [ -d "$wheels" ]; then
  need=$("$PY" "$root/experiments/gpu/wheels.py" "$wheels" "$root/requirements.txt") || exit 1
  if [ -n "$need" ]; then
    echo "installing carried wheels: $need" | tee -a "$out/run.log"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ssljax_site $need \
      2>&1 | tee -a "$out/run.log"
    export PYTHONPATH="$PYTHONPATH:/tmp/ssljax_site"
  fi
fi
"$PY" "$root/experiments/gpu/run_gpu.py" --out "$out" "$@" 2>&1 | tee -a "$out/run.log"
exit "${PIPESTATUS[0]}"
