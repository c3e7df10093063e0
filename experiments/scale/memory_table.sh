#!/usr/bin/env bash
# The rows of BENCHMARKS.md's "Memory at scale": ahead-of-time compiles of the real train step for TPU slices, on
# this CPU machine (libtpu in its own directory: LIBTPU_DIR, see docs/scaling.md). One compile at a time; each JSON
# line is appended to experiments/scale/memory.jsonl. Usage: bash experiments/scale/memory_table.sh [ROW ...]
set -u
cd "$(dirname "$0")/../.."
OUT=experiments/scale/memory.jsonl
TPU_PATH="${LIBTPU_DIR:-/tmp/scale_models_tpu}"
MAE="configs/mae.py:dataset=imagenet2012,backbone=vit_huge --config.model.patch_size=14"
DINO="experiments/scale/dino_multicrop.py:dataset=imagenet2012,backbone=vit_giant --config.model.patch_size=14"
run() {  # name topology config-and-overrides...
  local name=$1 topo=$2; shift 2
  echo "== $name ($topo) $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >&2
  PYTHONPATH="$PWD:$TPU_PATH" python -m ssljax.bench --memory --topology "$topo" --config "$@" 2>/tmp/memory_table_$name.err \
    | python -c "import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); d['row']='$name'; print(json.dumps(d))" >> $OUT \
    || { echo "row $name failed: $(grep -v WARNING /tmp/memory_table_$name.err | tail -2)" >&2; }
}
rows=("$@")
[ ${#rows[@]} -eq 0 ] && rows=(mae_h_scan mae_h_scan_remat mae_h_unrolled dino_g_v5e_scan_remat dino_g_v4_scan_remat dino_g_v4_scan)
for row in "${rows[@]}"; do
  case $row in
    mae_h_scan) run $row v5e-256 $MAE --config.batch_size=4096 --config.model.scan=true ;;
    mae_h_scan_remat) run $row v5e-256 $MAE --config.batch_size=4096 --config.model.scan=true --config.model.remat=block ;;
    mae_h_unrolled) run $row v5e-256 $MAE --config.batch_size=4096 ;;
    mae_h_v4_scan) run $row v4-1024 $MAE --config.batch_size=8192 --config.model.scan=true ;;
    dino_g_v5e_scan_remat) run $row v5e-256 $DINO --config.batch_size=2048 --config.model.scan=true --config.model.remat=block ;;
    dino_g_v4_scan_remat) run $row v4-1024 $DINO --config.batch_size=2048 --config.model.scan=true --config.model.remat=block ;;
    dino_g_v4_scan) run $row v4-1024 $DINO --config.batch_size=2048 --config.model.scan=true ;;
    dino_g_v5e_fsdp16_remat) run $row v5e-256 $DINO --config.batch_size=2048 --config.model.scan=true --config.model.remat=block \
        --config.mesh="(('data', -1), ('fsdp', 16))" --config.sharding_min_size_mb=4 ;;  # measured at the then default 4
    *) echo "unknown row $row" >&2 ;;
  esac
done
