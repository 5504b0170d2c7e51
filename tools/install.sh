#!/usr/bin/env bash
# Installs mmshufflemamba with the OpenMMLab set it is tested against.
#
#   bash tools/install.sh            # package + mmengine/mmcv/mmpretrain/mmseg/mmdet
#   bash tools/install.sh --tests    # ... plus the test requirements
#
# torch: an installed torch is never replaced. With none installed, the torch/torchvision
# pair named by TORCH_SPEC (default: the pair that imports together on the CPU machines we
# test on) is installed. If torchvision does not import beside your torch, the script stops
# and says how to fix it.
# mmcv 2.1.0 ships no wheel for current torch; it is built from source with its CPU ops
# (15-25 min on 2 cores the first time; pip caches the built wheel afterwards).
# Last, the compiled CPU selective scan is built (python -m mmshufflemamba.ops.build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --progress-bar off)
TORCH_SPEC=${TORCH_SPEC:-"torch===2.13.0 torchvision==0.28.0"}
WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    *) echo "install.sh: unknown argument '$arg' (known: --tests)" >&2; exit 2 ;;
  esac
done
log() { printf '[install] %s\n' "$*"; }

# 1. torch / torchvision: keep what is there, install the tested pair only when absent.
if "$PY" -c "import torch" 2>/dev/null; then
  log "keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  log "no torch found: installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
fi
if ! "$PY" -c "import torchvision" 2>/dev/null; then
  if "$PY" -m pip show torchvision >/dev/null 2>&1; then
    echo "install.sh: torchvision is installed but does not import beside torch" \
      "$("$PY" -c 'import torch; print(torch.__version__)'). mmpretrain needs both." \
      "Install a matching pair yourself (e.g. pip install 'torch===2.13.0' 'torchvision==0.28.0')" \
      "and run this script again; it never replaces your torch." >&2
    exit 1
  fi
  TV=$("$PY" - <<'PYEOF'
import torch
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
# torchvision 0.(minor+15) pairs with torch 2.minor
print(f'torchvision==0.{minor + 15}.*')
PYEOF
)
  log "installing $TV to match the installed torch"
  "${PIP[@]}" "$TV" --no-deps
  "$PY" -c "import torchvision" 2>/dev/null || {
    echo "install.sh: $TV does not import beside torch $("$PY" -c 'import torch; print(torch.__version__)')" \
      "(the registry has only CUDA torchvision builds; a CPU-only torch cannot load them)." \
      "Install the pair: pip install 'torch===2.13.0' 'torchvision==0.28.0' and run again." >&2
    exit 1
  }
fi
# Pin what is installed so that no later requirement can swap torch out.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" - >"$CONSTRAINTS" <<'PYEOF'
from importlib.metadata import version
for name in ('torch', 'torchvision'):
    print(f'{name}=={version(name)}')
PYEOF

# 2. mmcv from source with its CPU ops (its setup.py imports pkg_resources: setuptools<80).
"${PIP[@]}" -c "$CONSTRAINTS" "setuptools<80" wheel ninja -r requirements/runtime.txt
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  log "mmcv 2.1.0 with ops already installed"
else
  log "building mmcv 2.1.0 with CPU ops (slow the first time; the wheel is cached)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "${PIP[@]}" -c "$CONSTRAINTS" --no-build-isolation "mmcv==2.1.0"
fi

# 3. The downstream codebases and the package itself.
"${PIP[@]}" -c "$CONSTRAINTS" -r requirements/mminstall.txt
if [ "$WITH_TESTS" = 1 ]; then
  "${PIP[@]}" -c "$CONSTRAINTS" -r requirements/tests.txt
fi
"${PIP[@]}" -c "$CONSTRAINTS" --no-deps -e .

# 4. The compiled CPU selective scan (about a minute; cached per torch version and CPU).
if ! "$PY" -m mmshufflemamba.ops.build; then
  log "WARNING: the compiled CPU selective scan was not built; the slower PyTorch scan will be used"
fi
"$PY" -c "import torch, torchvision, mmcv.ops, mmpretrain.models, mmseg.models, mmdet.models, mmshufflemamba; print('[install] ok: torch', torch.__version__, 'mmcv', mmcv.__version__)"
