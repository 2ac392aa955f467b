# syntax=docker/dockerfile:1
# hlrp on a GPU cluster: Ubuntu 24.04, Python 3.12, CUDA PyTorch (pip wheels), headless
# MuJoCo (EGL, OSMesa fallback), ffmpeg, InfiniBand verbs for multi-node NCCL.
#
# Build from the repository root (the build context must be the repo, not containers/):
#   docker build -f containers/hlrp.Dockerfile -t hlrp:latest \
#       --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# Then, for Slurm + pyxis, convert it to a squashfs file (see containers/README.md):
#   enroot import -o hlrp.sqsh dockerd://hlrp:latest
#
# The image holds the dependencies and a snapshot of the repository at /opt/hlrp (installed
# editable, so `python -m hlrp.doctor` works with nothing mounted). On the cluster the
# launcher (slurm/common.sh) bind-mounts your checkout and puts <checkout>/src first on
# PYTHONPATH: the code you edit is the code that runs, and the image only needs rebuilding
# when pyproject.toml (the dependencies) changes.
#
# The software is installed by containers/provision.sh, which containers/build_enroot.sh
# also runs to build the same image on LRZ without Docker.

ARG BASE_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
COPY containers/provision.sh /usr/local/bin/hlrp-provision
RUN hlrp-provision system && hlrp-provision clean

# ---------------------------------------------------------------------------------------
FROM runtime AS build
# defaults = environment.yml (the CUDA 12.8 stack the cluster runs); override with --build-arg
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PIP_EXTRAS=sim
# packages hlrp imports that pyproject.toml does not declare yet (see provision.sh)
ARG EXTRA_PIP="lightning>=2.4 vector-quantize-pytorch wandb"
# (build args reach provision.sh as environment variables of the RUN steps)
RUN hlrp-provision buildtools
# layer 1: torch (changes only with the build args; a layer of its own, it is the big one)
# hadolint ignore=DL3059
RUN hlrp-provision python
# layer 2: the dependencies (change only with pyproject.toml)
COPY pyproject.toml README.md /opt/hlrp/
RUN hlrp-provision deps /opt/hlrp
# layer 3: the code and the Hydra configs (hlrp finds config/ next to src/)
COPY src /opt/hlrp/src
COPY config /opt/hlrp/config
COPY workflow /opt/hlrp/workflow
RUN hlrp-provision package /opt/hlrp \
    && hlrp-provision check \
    && find /opt/venv /opt/hlrp -name __pycache__ -prune -exec rm -rf {} + \
    && chmod -R a+rX /opt/venv /opt/hlrp

# ---------------------------------------------------------------------------------------
FROM runtime
ARG GIT_COMMIT=unknown
ARG TORCH_VERSION=2.9.1
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/hlrp /opt/hlrp
RUN printf 'git_commit=%s\ntorch=%s\nbuilt=%s\n' "${GIT_COMMIT}" "${TORCH_VERSION}" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > /opt/hlrp/IMAGE_INFO

LABEL org.opencontainers.image.title="hlrp" \
      org.opencontainers.image.description="hlrp: robot policies from action-free videos (LAQ, VLA, finetuning)" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Under pyxis/enroot these values win over variables exported on the host (pyxis gives the
# image precedence): slurm/common.sh passes MUJOCO_GL, WANDB_MODE and PYTHONPATH explicitly.
# No HOME and no USER here: enroot runs every job as the submitting user with the host HOME;
# with Docker use `--user $(id -u):$(id -g) -e HOME=/tmp`.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUJOCO_GL=egl \
    WANDB_MODE=offline \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics

WORKDIR /workspace
# with no command: the setup check (torch/CUDA, decoders, headless rendering, Snakemake, wandb)
CMD ["python", "-m", "hlrp.doctor"]
