#!/usr/bin/env bash
# Installs the hlrp software stack into a container root filesystem, one phase at a time.
# The single source of truth for both ways of building the image:
#   * containers/hlrp.Dockerfile runs the phases as separate layers (docker build), and
#   * containers/build_enroot.sh runs them inside `enroot start --root --rw` (LRZ, no Docker).
#
#   provision.sh system      runtime system packages: Python 3, ffmpeg, EGL/OSMesa, InfiniBand verbs
#   provision.sh buildtools  compilers and Python headers (only for packages without wheels)
#   provision.sh python      virtual environment $HLRP_VENV with CUDA torch/torchvision
#   provision.sh deps SRC    hlrp's dependencies from SRC/pyproject.toml (plus $EXTRA_PIP)
#   provision.sh package SRC hlrp itself, editable from SRC (no dependency changes)
#   provision.sh environ     write the image's environment to /etc/environment (enroot reads it)
#   provision.sh check       import everything the stages need; fail loudly if something is missing
#   provision.sh clean       drop apt lists and pip caches
#
# Settings (environment variables, defaults match environment.yml, the tested cluster stack):
#   HLRP_VENV=/opt/venv  TORCH_VERSION=2.9.1  TORCHVISION_VERSION=0.24.1
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128  PIP_EXTRAS=sim  EXTRA_PIP="..."
set -euo pipefail

HLRP_VENV="${HLRP_VENV:-/opt/venv}"
TORCH_VERSION="${TORCH_VERSION:-2.9.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.24.1}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
PIP_EXTRAS="${PIP_EXTRAS:-sim}"
# Imported by hlrp but not (yet) declared in pyproject.toml: lightning (train_laq),
# vector-quantize-pytorch (fsq / vq_ema quantizers), wandb (offline logging). Harmless once
# pyproject.toml declares them; set EXTRA_PIP="" to install exactly what pyproject.toml says.
EXTRA_PIP="${EXTRA_PIP-lightning>=2.4 vector-quantize-pytorch wandb}"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[provision %s] %s\n' "$phase" "$*" >&2; }

pip_() { "$HLRP_VENV/bin/python" -m pip "$@"; }

constraints() {
    # keep the CUDA torch build: any dependency asking for another torch fails the install
    local file="$HLRP_VENV/hlrp-constraints.txt"
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$file"
    printf '%s' "$file"
}

phase="${1:-}"
shift || true
case "$phase" in
system)
    apt-get update -qq
    # python3: Ubuntu 24.04's Python 3.12 (the same minor version as environment.yml)
    # ffmpeg: system FFmpeg (torchcodec, inspecting videos); decord and PyAV bring their own
    # libegl1 libgl1 libglvnd0 libgles2: GLVND front ends; the NVIDIA EGL driver is mounted
    #   by the container runtime (NVIDIA_DRIVER_CAPABILITIES includes "graphics")
    # libegl-mesa0 libgl1-mesa-dri: Mesa EGL + llvmpipe, the software fallback without a GPU
    # libosmesa6: MUJOCO_GL=osmesa (pure software rendering)
    # libibverbs1 ibverbs-providers: InfiniBand verbs, so NCCL uses IB between nodes
    apt-get install -y -qq --no-install-recommends \
        ca-certificates python3 python3-venv ffmpeg \
        libegl1 libgl1 libglvnd0 libgles2 libegl-mesa0 libgl1-mesa-dri libosmesa6 \
        libibverbs1 ibverbs-providers procps less >/dev/null
    # GLVND picks EGL vendors from these files; the NVIDIA one is not shipped by Ubuntu's
    # packages (the driver libraries themselves come from the host at container start)
    mkdir -p /usr/share/glvnd/egl_vendor.d
    if [[ ! -e /usr/share/glvnd/egl_vendor.d/10_nvidia.json ]]; then
        printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n' \
            >/usr/share/glvnd/egl_vendor.d/10_nvidia.json
    fi
    # a world-writable work dir for `docker run --user $(id -u)` without a bind mount
    mkdir -p /workspace && chmod 1777 /workspace
    ;;
buildtools)
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential python3-dev git >/dev/null
    ;;
python)
    if [[ ! -x "$HLRP_VENV/bin/python" ]]; then
        python3 -m venv "$HLRP_VENV"
    fi
    pip_ install --no-cache-dir --upgrade pip setuptools wheel
    log "torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION from $TORCH_INDEX_URL"
    pip_ install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    ;;
deps)
    src="${1:?usage: provision.sh deps SRC (a folder with pyproject.toml)}"
    [[ -f "$src/pyproject.toml" ]] || { log "no pyproject.toml in $src"; exit 2; }
    # Install the dependencies through a throwaway copy of pyproject.toml with an empty
    # package, so this layer only changes when pyproject.toml does (not on every code edit).
    stub="$(mktemp -d)"
    cp "$src/pyproject.toml" "$stub/"
    if [[ -f "$src/README.md" ]]; then cp "$src/README.md" "$stub/"; else : >"$stub/README.md"; fi
    mkdir -p "$stub/src/hlrp" && : >"$stub/src/hlrp/__init__.py"
    c="$(constraints)"
    read -r -a extra <<<"$EXTRA_PIP"
    pip_ install --no-cache-dir -c "$c" "${stub}[${PIP_EXTRAS}]" "${extra[@]}"
    pip_ uninstall -y -q hlrp
    rm -rf "$stub"
    ;;
package)
    src="${1:?usage: provision.sh package SRC}"
    # editable: hlrp finds its Hydra configs at <checkout>/config next to src/
    pip_ install --no-cache-dir --no-deps -e "$src"
    ;;
environ)
    # enroot starts containers with /etc/environment; Docker images carry ENV in their config.
    {
        printf 'PATH=%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' "$HLRP_VENV"
        printf 'VIRTUAL_ENV=%s\n' "$HLRP_VENV"
        printf 'PYTHONUNBUFFERED=1\n'
        printf 'MUJOCO_GL=egl\n'
        printf 'WANDB_MODE=offline\n'
        printf 'NVIDIA_VISIBLE_DEVICES=all\n'
        printf 'NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics\n'
    } >/etc/environment
    ;;
check)
    py="$HLRP_VENV/bin/python"
    "$py" - <<'EOF'
import importlib, sys
mods = ["torch", "torchvision", "lightning", "hydra", "webdataset", "av", "simplejpeg",
        "mujoco", "metaworld", "snakemake", "snakemake_executor_plugin_slurm", "wandb",
        "hlrp.data.preprocess", "hlrp.data.index", "hlrp.laq.train", "hlrp.laq.report",
        "hlrp.laq.label", "hlrp.doctor"]
if sys.platform == "linux":
    mods.append("decord")
missing = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m}: {type(e).__name__}: {e}")
import torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}")
if missing:
    print("missing or broken:\n  " + "\n  ".join(missing), file=sys.stderr)
    sys.exit(1)
if not torch.version.cuda:
    print("torch is a CPU build: set TORCH_INDEX_URL to a CUDA wheel index", file=sys.stderr)
    sys.exit(1)
print("all stage imports ok")
EOF
    # config composition and the decoders (no GPU at build time: only the preprocess stage)
    "$py" -m hlrp.doctor --skip-render --stages preprocess
    ;;
clean)
    rm -rf /var/lib/apt/lists/* /root/.cache/pip
    ;;
*)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
