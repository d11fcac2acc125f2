#!/usr/bin/env bash
# The GPU check and GPU figures in one short script (docs/benchmarks.md "GPU"): throughput at paper width in
# fp32 / bf16 / fp16, the main job on a GPU in 16-bit mixed precision, a federation, a 3D run and a distillation
# on the GPU (one batch each), and predict on cuda. Every step has its own time limit and the script goes on
# after a failed one, so one run shows every GPU problem; it exits non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh [out_dir] [budget_s]   # WANDB_MODE=offline; logger=csv (W&B is not GPU-specific)
#
# budget_s (default 3600) caps the whole script: a step that would start past it is skipped and said to be,
# and each step's own limit is cut to what is left. Step logs, metrics.json files and figures are packed into
# <out_dir>/gpu_check_logs.tgz at the end. ONLY=<regex> runs the steps whose names match (a rerun of the failed
# ones: ONLY='^(fdr_|predict)'); DEVICE=cpu is a dry run of the script itself on a machine without a GPU.
#
# Runs from the repository root. Where the packages are not installed (a bare GPU machine), put their wheels in
# .whl/ first; the script then installs them into /tmp/site.
set -u
OUT_DIR=${1:-gpu_check_out}
BUDGET=${2:-3600}
mkdir -p "$OUT_DIR"
export WANDB_MODE=offline PYTHONUNBUFFERED=1 FEDMED_LOG_DIR="$OUT_DIR/logs" FEDMED_DATA_DIR="$OUT_DIR/data"
PY=${PY:-python3}
if ! $PY -c "import hydra, monai, segmentation_models_pytorch, albumentations, nibabel" 2>/dev/null \
   && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
failed=()
ran=0
not_selected=0
step() {  # step NAME SECONDS CMD...: time-limited, output to $OUT_DIR/NAME.log, a one-line verdict here
  local name=$1 limit=$2; shift 2
  if ! [[ $name =~ ${ONLY:-.} ]]; then not_selected=$((not_selected + 1)); return; fi
  local left=$((BUDGET - SECONDS))
  if [ $left -lt 30 ]; then echo "== $name: skipped (budget spent)"; failed+=("$name(skipped)"); return; fi
  [ $limit -gt $left ] && limit=$left
  local t0=$SECONDS
  rm -rf "${OUT_DIR:?}/$name"  # a run folder of an earlier pass: its best.ckpt would be what predict scores
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  ran=$((ran + 1))
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  if [ $rc -ne 0 ]; then failed+=("$name"); tail -n 15 "$OUT_DIR/$name.log"; fi
}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, pytorch_lightning as pl, monai, segmentation_models_pytorch as smp; \
print('torch', torch.__version__, 'lightning', pl.__version__, 'monai', monai.__version__, 'smp', smp.__version__, \
'cuda', torch.cuda.is_available())"

DEVICE=${DEVICE:-cuda}
GPU="trainer=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu) logger=csv"
# throughput: paper width, 512² slices as LiTS (paper 000), batch 8; each model in its own process
for prec in fp32 bf16; do
  step "throughput_$prec" 240 $PY benchmarks/seg_throughput.py --device $DEVICE --precision $prec --width 0 --size 512 \
    --batch 8 --steps 10 --warmup 3 --models dnet unet3plus attention_unet unet
done
# the main job on the GPU (trainer=gpu: 16-mixed), the full default 6 epochs, then predict on cuda with its weights
step lits_dnet 300 $PY -m experiments.run +exp=lits_dnet $GPU hydra.run.dir="$OUT_DIR/lits_dnet"
lits="$OUT_DIR/data/synthetic_lits"   # all 16 phantoms lits_dnet generated (its training cases too): a GPU path check
step predict_cuda 180 $PY -m experiments.predict ckpt="$OUT_DIR/lits_dnet/checkpoints/best.ckpt" input="$lits" \
  output="$OUT_DIR/pred" labels="$lits" device=$DEVICE
# one batch each on the GPU: a federation (clients' Trainers on cuda), a 3D net, a distillation, FedBN in bf16
for exp in fed_lits_dnet kits_hlfd fed_kits_hlfd; do
  step "fdr_$exp" 240 $PY -m experiments.run +exp=$exp $GPU ++trainer.fast_dev_run=true hydra.run.dir="$OUT_DIR/fdr_$exp"
done
# 3D on the GPU: SegResNetVAE patches (the default 2 epochs) and predict by sliding window on cuda
step pancreas_3d 240 $PY -m experiments.run +exp=pancreas_3d $GPU hydra.run.dir="$OUT_DIR/pancreas_3d"
pan="$OUT_DIR/data/synthetic_pancreas_3d"
step predict_3d_cuda 180 $PY -m experiments.predict ckpt="$OUT_DIR/pancreas_3d/checkpoints/best.ckpt" input="$pan" \
  output="$OUT_DIR/pred3d" labels="$pan" device=$DEVICE
phases=$([ "$DEVICE" = cpu ] || echo --phases)  # a third predict, timed phase by phase: too long for a CPU
step volumetric_predict 240 $PY -m benchmarks.volumetric predict --shape 256 256 100 --roi 64 $phases
# a CT's size: minutes on a CPU, so only on the GPU
[ "$DEVICE" = cpu ] || step volumetric_predict_ct 240 $PY -m benchmarks.volumetric predict --shape 512 512 200 --roi 64 $phases
step volumetric_patches 180 $PY -m benchmarks.volumetric patches --steps 5
step fedbn_bf16 240 $PY -m experiments.run +exp=fed_lits_dnet $GPU trainer.precision=bf16-mixed \
  federation/strategy=fedbn federation.rounds=2 hydra.run.dir="$OUT_DIR/fedbn_bf16"
step throughput_fp16_dnet 120 $PY benchmarks/seg_throughput.py --device $DEVICE --precision fp16 --width 0 --size 512 \
  --batch 8 --steps 10 --warmup 3 --models dnet
grep -h -E "^\| (dnet|unet3plus|attention_unet|unet) " "$OUT_DIR"/throughput_*.log 2>/dev/null
$PY - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
keys = ("fit_seconds", "perf/train_images_per_s", "perf/peak_memory_mib", "test/dice", "test/dice_std", "test/hd95",
        "fed/best/test/dice", "dice", "dice_std", "hd95", "num_cases")
for m in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    d = json.loads(m.read_text())
    d = d.get("summary", d)
    print(m.parent.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if k in keys})
EOF
tail -n 2 "$OUT_DIR"/volumetric_*.log 2>/dev/null
(cd "$OUT_DIR" && find . -name "*.log" -o -name "metrics.json" -o -name "*.png" -o -name "*.csv" | grep -v "^./data" \
  | tar czf gpu_check_logs.tgz -T - 2>/dev/null)
summary="$ran step(s) ran on $DEVICE"
[ $not_selected -gt 0 ] && summary="$summary, $not_selected not selected by ONLY"
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]} ($summary)"; exit 1; fi
if [ "$DEVICE" = cpu ]; then echo "dry run passed ($summary): nothing was checked on a GPU"
else echo "GPU checks passed ($summary)"; fi
