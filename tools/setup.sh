#!/usr/bin/env bash
# One-command, idempotent set-up: a virtual environment at .venv/ with everything the project needs.
# A second run on a ready machine only checks the imports and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
STAMP="$VENV/.eva_transfer_setup"
CACHE="$ROOT/.cache/setup"
D2_WHEEL_SHA=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
D2_GIT=https://github.com/facebookresearch/detectron2.git

log() { echo "[setup] $*"; }

want=$(cat tools/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c "import eva_transfer_projects.compat as c; c.apply(); import torch, timm, detectron2.modeling, mmseg, mmdet.models, lvis, faster_coco_eval" 2>/dev/null; then
  log "environment at .venv is ready (nothing to do)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { log "creating virtual environment at .venv"; "$PY" -m venv "$VENV"; }
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --timeout 30 --retries 2 "$@"; }
pip install -q --upgrade "pip>=24" wheel "setuptools<81"

log "torch"
pip install -q "torch==2.14.1" "torchvision==0.29.1"

log "project dependencies"
pip install -q -e ".[dev]" --no-build-isolation

# detectron2: upstream from source where GitHub answers, otherwise the repacked PyPI copy of upstream's code.
if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  if timeout 10 git ls-remote --heads "$D2_GIT" >/dev/null 2>&1; then
    log "detectron2: route=github (building upstream from source)"
    pip install -q --no-build-isolation "git+$D2_GIT"
  else
    log "detectron2: route=pypi (GitHub unreachable; repacking sal-detectron2==0.7.2 without its stale _C binary)"
    rm -rf "$CACHE/d2" && mkdir -p "$CACHE/d2"
    pip download -q --no-deps --only-binary=:all: --python-version 3.10 sal-detectron2==0.7.2 -d "$CACHE/d2"
    whl=$(ls "$CACHE"/d2/sal_detectron2-0.7.2-*.whl)
    echo "$D2_WHEEL_SHA  $whl" | sha256sum -c --quiet - || { log "detectron2 wheel checksum mismatch: $whl"; exit 1; }
    "$VENV/bin/python" -m wheel unpack -d "$CACHE/d2/src" "$whl" >/dev/null
    src=$(ls -d "$CACHE"/d2/src/sal_detectron2-0.7.2)
    rm -f "$src"/detectron2/_C.*.so
    rm -rf "$src/tools"   # detectron2's scripts as a top-level 'tools' package would shadow others
    info=$(ls -d "$src"/*.dist-info)
    sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' "$info/WHEEL"
    sed -i -e 's/^Requires-Dist: numpy.*/Requires-Dist: numpy/' "$info/METADATA"
    # keep RECORD consistent with the files removed above
    grep -v -e '^tools/' -e '^detectron2/_C\.' "$info/RECORD" > "$info/RECORD.new" && mv "$info/RECORD.new" "$info/RECORD"
    sed -i -e '/^tools$/d' "$info/top_level.txt" 2>/dev/null || true
    mkdir -p "$CACHE/d2/out"
    "$VENV/bin/python" -m wheel pack -d "$CACHE/d2/out" "$src" >/dev/null
    pip install -q --no-deps --force-reinstall "$CACHE"/d2/out/*.whl
  fi
else
  log "detectron2: already installed"
fi

# mmcv: keep a full build (with compiled ops) when present, otherwise the pure-Python mmcv-lite.
if "$VENV/bin/python" -c "import mmcv._ext" 2>/dev/null; then
  log "mmcv: full build with compiled ops found, keeping it"
else
  log "mmcv: route=mmcv-lite (no compiled ops; pure-PyTorch paths are used)"
  pip install -q "mmcv-lite==2.1.0"
fi

log "checking imports"
"$VENV/bin/python" - <<'PY'
import eva_transfer_projects.compat as compat
applied = compat.apply()
import torch, torchvision, timm, detectron2, mmengine, mmcv, mmseg, mmdet, lvis, faster_coco_eval, pycocotools  # noqa
import detectron2.modeling, mmseg.models, mmdet.models  # noqa
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__}, mmcv {mmcv.__version__}, "
      f"mmseg {mmseg.__version__}, timm {timm.__version__}; stand-ins applied: {sorted(applied) or 'none'}")
PY
echo "$want" > "$STAMP"
log "done"
