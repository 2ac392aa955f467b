#!/usr/bin/env bash
# Build the hlrp image as an enroot squashfs file without Docker (e.g. on LRZ), with the same
# steps as containers/hlrp.Dockerfile (both run containers/provision.sh).
#
# enroot is not available on LRZ login nodes: run this on a compute node, e.g.
#   salloc -p lrz-cpu --qos=cpu -c 16 --mem=64G -t 02:00:00
#   srun --pty bash
#   cd <your checkout>
#   bash containers/build_enroot.sh /dss/<project storage>/hlrp/images/hlrp-$(git rev-parse --short HEAD).sqsh
#
# Needs internet access from the node (the base image from Docker Hub, torch and the
# dependencies from PyPI). Takes 10-20 minutes; the result is about 5 GB.
#
# Settings (environment variables):
#   BASE_IMAGE           enroot URI of the base (default docker://ubuntu:24.04)
#   TORCH_VERSION TORCHVISION_VERSION TORCH_INDEX_URL PIP_EXTRAS EXTRA_PIP
#                        as in provision.sh (defaults: environment.yml's CUDA 12.8 stack)
#   HLRP_ENROOT_WORK     scratch folder for the base image and the unpacked container
#                        (default $TMPDIR or /tmp; needs ~15 GB, keep it out of $HOME)
set -euo pipefail

out="${1:?usage: build_enroot.sh OUTPUT.sqsh (on project storage, not in \$HOME)}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
base="${BASE_IMAGE:-docker://ubuntu:24.04}"
work="${HLRP_ENROOT_WORK:-${TMPDIR:-/tmp}/hlrp-enroot-${USER:-$(id -un)}}"
name="hlrp-build-$$"

command -v enroot >/dev/null || {
    echo "enroot not found: run this on a compute node (srun --pty bash), not a login node" >&2
    exit 1
}
case "$out" in
*.sqsh) ;;
*) echo "the output should end in .sqsh: $out" >&2; exit 2 ;;
esac
mkdir -p "$work" "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd -P)/$(basename "$out")"
[[ -e "$out" ]] && { echo "$out exists: remove it or pick another name" >&2; exit 2; }

# enroot's layer cache and unpacked containers default to $HOME (~/.cache, ~/.local/share):
# keep these gigabytes out of the small home quota unless the site configured otherwise
export ENROOT_CACHE_PATH="${ENROOT_CACHE_PATH:-$work/cache}"
export ENROOT_DATA_PATH="${ENROOT_DATA_PATH:-$work/data}"
mkdir -p "$ENROOT_CACHE_PATH" "$ENROOT_DATA_PATH"

cleanup() { enroot remove -f "$name" >/dev/null 2>&1 || true; rm -f "$work/base-$$.sqsh"; }
trap cleanup EXIT

echo "== importing $base"
enroot import -o "$work/base-$$.sqsh" "$base"
enroot create -n "$name" "$work/base-$$.sqsh"
rootfs="$ENROOT_DATA_PATH/$name"
[[ -d "$rootfs/usr" ]] || { echo "cannot find the container root at $rootfs" >&2; exit 1; }

echo "== copying the provisioning script and a snapshot of $repo"
install -m 0755 "$repo/containers/provision.sh" "$rootfs/usr/local/bin/hlrp-provision"
mkdir -p "$rootfs/opt/hlrp"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$repo/config" "$repo/workflow" \
    "$rootfs/opt/hlrp/"
find "$rootfs/opt/hlrp" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
# apt drops privileges to the _apt user for downloads, which a rootless container cannot do
mkdir -p "$rootfs/etc/apt/apt.conf.d"
echo 'APT::Sandbox::User "root";' >"$rootfs/etc/apt/apt.conf.d/99hlrp-enroot"
commit="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]]; then commit="$commit-dirty"; fi

echo "== provisioning (apt, torch, dependencies, hlrp): this takes a while"
env_args=()
for v in TORCH_VERSION TORCHVISION_VERSION TORCH_INDEX_URL PIP_EXTRAS EXTRA_PIP; do
    if [[ -n "${!v+x}" ]]; then env_args+=(--env "$v=${!v}"); fi
done
enroot start --root --rw "${env_args[@]}" "$name" bash -euo pipefail -c '
    hlrp-provision system
    hlrp-provision buildtools
    hlrp-provision python
    hlrp-provision deps /opt/hlrp
    hlrp-provision package /opt/hlrp
    hlrp-provision environ
    hlrp-provision check
    hlrp-provision clean
    find /opt/venv /opt/hlrp -name __pycache__ -prune -exec rm -rf {} +
    chmod -R a+rX /opt/venv /opt/hlrp
'
torch_version="$(cat "$rootfs"/opt/venv/lib/python3*/site-packages/torch-*.dist-info/METADATA 2>/dev/null |
    sed -n 's/^Version: //p' | head -n1 || true)"
printf 'git_commit=%s\ntorch=%s\nbuilt=%s\nbuilder=enroot\n' "$commit" "$torch_version" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$rootfs/opt/hlrp/IMAGE_INFO"
rm -f "$rootfs/etc/apt/apt.conf.d/99hlrp-enroot"

echo "== exporting $out"
enroot export -o "$out" "$name"
chmod a+r "$out"
echo "done: export HLRP_IMAGE=$out"
