# shellcheck shell=bash
# slurm/common.sh: sourced by the slurm/*.sbatch templates, not run on its own.
#
# Sets up one hlrp stage inside a Slurm job:
#   * finds the checkout (HLRP_REPO, else the folder sbatch was called from) and cd's into it;
#   * picks the software: the container image $HLRP_IMAGE (enroot/pyxis) when set, else a
#     Python environment on the host (HLRP_VENV, HLRP_CONDA_ENV, or whatever is on PATH);
#   * either way the code that runs is <checkout>/src (PYTHONPATH), not a copy in the
#     environment or the image;
#   * hlrp_srun runs a command as a Slurm step (every task gets SLURM_* variables), inside
#     the container when there is one; HLRP_REQUEUE=1 makes it requeue the job when Slurm
#     signals the approaching time limit (sbatch --signal=B:USR1@N --requeue).
#
# Variables (all optional):
#   HLRP_REPO          the checkout (default: $SLURM_SUBMIT_DIR, i.e. submit from the repo root)
#   HLRP_IMAGE         container image: a .sqsh path (absolute) or an enroot URI
#                      (e.g. ghcr.io#org/hlrp:tag); unset = run on the host
#   HLRP_MOUNTS        extra folders for the container, comma-separated, mounted at the same
#                      path (SRC) or elsewhere (SRC:DST[:FLAGS]); the checkout and the paths
#                      a template is given are mounted automatically
#   HLRP_CONTAINER_ARGS_EXTRA  more pyxis flags, e.g. "--container-mount-home --container-writable"
#   HLRP_VENV          a virtualenv to activate on the host
#   HLRP_CONDA_ENV     a conda env to activate on the host (e.g. hlrp, from environment.yml)
#   HLRP_CONDA_ROOT    where conda is installed, if `conda` is not on PATH (default ~/miniforge3)
#   HLRP_MODULES       environment modules to load first (space-separated), where there are any
#   HLRP_MAX_REQUEUES  stop requeueing after this many restarts (default 20)
#   MUJOCO_GL, WANDB_MODE  passed into the container (default egl, offline)
# Nothing is unset: the job environment (SLURM_*, CUDA_VISIBLE_DEVICES, ...) goes through.

set -euo pipefail

hlrp_log() { printf '[hlrp %(%F %T)T] %s\n' -1 "$*" >&2; }
hlrp_die() {
    hlrp_log "error: $*"
    exit 1
}

# --- the checkout ------------------------------------------------------------------------
HLRP_REPO="${HLRP_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [[ ! -f "$HLRP_REPO/pyproject.toml" || ! -d "$HLRP_REPO/src/hlrp" ]]; then
    hlrp_die "$HLRP_REPO is not an hlrp checkout: run sbatch from the repository root or set HLRP_REPO"
fi
HLRP_REPO="$(cd "$HLRP_REPO" && pwd -P)"
export HLRP_REPO
cd "$HLRP_REPO"
mkdir -p logs/slurm

export MUJOCO_GL="${MUJOCO_GL:-egl}"
export WANDB_MODE="${WANDB_MODE:-offline}"
export PYTHONUNBUFFERED=1
HLRP_MAX_REQUEUES="${HLRP_MAX_REQUEUES:-20}"

# absolute path of a file or folder (which need not exist yet), relative to the checkout
hlrp_abspath() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$HLRP_REPO/${1#./}" ;;
    esac
}

# --- the software: container or host environment -------------------------------------
HLRP_CONTAINER_MOUNTS=()
HLRP_CONTAINER_ARGS=()

# hlrp_mount PATH...: make these paths visible in the container at the same place. A folder
# is mounted (created first if it does not exist yet: pass output folders, not output files);
# for an existing file, its folder. Paths inside the checkout are covered by the checkout's
# own mount. No-op without a container.
hlrp_mount() {
    [[ -n "${HLRP_IMAGE:-}" ]] || return 0
    local p dir m
    for p in "$@"; do
        [[ -n "$p" ]] || continue
        p="$(hlrp_abspath "$p")"
        if [[ -f "$p" ]]; then
            dir="$(dirname "$p")"
        else
            mkdir -p "$p"
            dir="$p"
        fi
        dir="$(cd "$dir" && pwd -P)"
        case "$dir/" in "$HLRP_REPO"/*) continue ;; esac
        for m in "${HLRP_CONTAINER_MOUNTS[@]}"; do
            [[ "$m" == "$dir:$dir" ]] && continue 2
        done
        HLRP_CONTAINER_MOUNTS+=("$dir:$dir")
    done
}

if [[ -n "${HLRP_IMAGE:-}" ]]; then
    HLRP_MODE=container
    # pyxis reads a squashfs file only from a path starting with / or ./ (anything else is a
    # registry reference that every job would download again)
    if [[ -e "$HLRP_IMAGE" ]]; then
        HLRP_IMAGE="$(cd "$(dirname "$HLRP_IMAGE")" && pwd -P)/$(basename "$HLRP_IMAGE")"
    elif [[ "$HLRP_IMAGE" == *.sqsh || "$HLRP_IMAGE" == /* || "$HLRP_IMAGE" == ./* ]]; then
        hlrp_die "HLRP_IMAGE=$HLRP_IMAGE does not exist (build it: containers/README.md)"
    else
        hlrp_log "HLRP_IMAGE=$HLRP_IMAGE is a registry reference: pyxis imports it on every job (slow); save a .sqsh instead"
    fi
    export HLRP_IMAGE
    HLRP_CONTAINER_MOUNTS=("$HLRP_REPO:$HLRP_REPO")
    if [[ -n "${HLRP_MOUNTS:-}" ]]; then
        IFS=',' read -r -a _hlrp_extra <<<"$HLRP_MOUNTS"
        for _m in "${_hlrp_extra[@]}"; do
            [[ -n "$_m" ]] || continue
            [[ -e "${_m%%:*}" ]] || hlrp_die "HLRP_MOUNTS: ${_m%%:*} does not exist"
            if [[ "$_m" == *:* ]]; then HLRP_CONTAINER_MOUNTS+=("$_m"); else hlrp_mount "$_m"; fi
        done
        unset _m _hlrp_extra
    fi
else
    HLRP_MODE=host
    if [[ -n "${HLRP_MODULES:-}" ]]; then
        if command -v module >/dev/null 2>&1 || declare -F module >/dev/null; then
            read -r -a _hlrp_modules <<<"$HLRP_MODULES"
            module load "${_hlrp_modules[@]}" || hlrp_die "module load $HLRP_MODULES failed"
            unset _hlrp_modules
        else
            hlrp_log "HLRP_MODULES is set but this node has no 'module' command: ignored"
        fi
    fi
    # activation scripts are not written for `set -u`
    set +u
    if [[ -n "${HLRP_VENV:-}" ]]; then
        # shellcheck disable=SC1091
        source "$HLRP_VENV/bin/activate" || hlrp_die "cannot activate HLRP_VENV=$HLRP_VENV"
    elif [[ -n "${HLRP_CONDA_ENV:-}" ]]; then
        if ! command -v conda >/dev/null 2>&1 && ! declare -F conda >/dev/null; then
            _conda_sh="${HLRP_CONDA_ROOT:-$HOME/miniforge3}/etc/profile.d/conda.sh"
            # shellcheck disable=SC1090
            [[ -f "$_conda_sh" ]] && source "$_conda_sh"
            unset _conda_sh
        fi
        if command -v conda >/dev/null 2>&1 || declare -F conda >/dev/null; then
            eval "$(conda shell.bash hook)"
            conda activate "$HLRP_CONDA_ENV" || hlrp_die "cannot activate conda env $HLRP_CONDA_ENV"
        else
            hlrp_die "HLRP_CONDA_ENV=$HLRP_CONDA_ENV but conda was not found (set HLRP_CONDA_ROOT)"
        fi
    fi
    set -u
    # the checkout's code wins over any installed copy of hlrp
    export PYTHONPATH="$HLRP_REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    command -v python >/dev/null || hlrp_die "no python on PATH: set HLRP_IMAGE, HLRP_VENV or HLRP_CONDA_ENV"
    python -c 'import hlrp, torch' 2>/dev/null ||
        hlrp_die "$(command -v python) cannot import hlrp and torch: set HLRP_IMAGE, HLRP_VENV or HLRP_CONDA_ENV (docs/lrz_workflow.md)"
fi
export HLRP_MODE

# the pyxis flags, built when a step starts (templates add mounts with hlrp_mount first)
_hlrp_container_args() {
    local mounts
    mounts="$(
        IFS=,
        printf '%s' "${HLRP_CONTAINER_MOUNTS[*]}"
    )"
    HLRP_CONTAINER_ARGS=(
        "--container-image=$HLRP_IMAGE"
        "--container-mounts=$mounts"
        "--container-workdir=$HLRP_REPO"
    )
    if [[ -n "${HLRP_CONTAINER_ARGS_EXTRA:-}" ]]; then
        local -a extra
        read -r -a extra <<<"$HLRP_CONTAINER_ARGS_EXTRA"
        HLRP_CONTAINER_ARGS+=("${extra[@]}")
    fi
}

# --- a summary at the top of the log ------------------------------------------------------
hlrp_banner() {
    local commit="unknown"
    if command -v git >/dev/null 2>&1; then
        commit="$(git -C "$HLRP_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        if [[ -n "$(git -C "$HLRP_REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
            commit="$commit (uncommitted changes)"
        fi
    fi
    hlrp_log "job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
        "on ${SLURM_JOB_NODELIST:-$(hostname)}, partition ${SLURM_JOB_PARTITION:-?}," \
        "${SLURM_JOB_NUM_NODES:-1} node(s) x ${SLURM_NTASKS_PER_NODE:-${SLURM_NTASKS:-1}} task(s)" \
        "x ${SLURM_CPUS_PER_TASK:-?} CPUs, GPUs ${CUDA_VISIBLE_DEVICES:-${SLURM_JOB_GPUS:-none}}"
    hlrp_log "checkout $HLRP_REPO at $commit"
    if [[ "$HLRP_MODE" == container ]]; then
        hlrp_log "container $HLRP_IMAGE (MUJOCO_GL=$MUJOCO_GL WANDB_MODE=$WANDB_MODE)"
    else
        hlrp_log "host python $(command -v python) (MUJOCO_GL=$MUJOCO_GL WANDB_MODE=$WANDB_MODE)"
    fi
}

# --- requeue at the time limit ------------------------------------------------------------
# With `#SBATCH --signal=B:USR1@N --requeue`, Slurm sends SIGUSR1 to this batch shell N
# seconds before the time limit. The handler requeues the job from the host (scontrol does
# not exist inside the container); Slurm then stops the step and starts the same script with
# the same arguments and environment again later, which resumes: training from
# output_dir/checkpoints/last.ckpt, labelling by skipping finished shards. Progress since the
# last periodic checkpoint (training.checkpoint_every_n_steps) is recomputed.
HLRP_REQUEUE_REQUESTED=0
_hlrp_interrupted=0
_hlrp_on_usr1() {
    _hlrp_interrupted=1
    [[ "$HLRP_REQUEUE_REQUESTED" == 1 ]] && return 0
    HLRP_REQUEUE_REQUESTED=1
    local job="${SLURM_JOB_ID:-}"
    if [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    fi
    if ((${SLURM_RESTART_COUNT:-0} >= HLRP_MAX_REQUEUES)); then
        hlrp_log "time limit near; not requeueing: already restarted ${SLURM_RESTART_COUNT:-0} times (HLRP_MAX_REQUEUES)"
        return 0
    fi
    hlrp_log "time limit near: requeueing job $job (it resumes when it starts again)"
    if scontrol requeue "$job"; then
        hlrp_log "requeued $job"
    else
        hlrp_log "scontrol requeue $job failed (submitted without --requeue?): submit the same command again to resume"
    fi
}

# --- running a step ----------------------------------------------------------------------
# hlrp_srun [srun options] -- command [args]
hlrp_srun() {
    local -a opts=() cmd=()
    while (($#)) && [[ "$1" != -- ]]; do
        opts+=("$1")
        shift
    done
    (($#)) || hlrp_die "hlrp_srun: put -- between the srun options and the command"
    shift
    if [[ "$HLRP_MODE" == container ]]; then
        _hlrp_container_args
        # /usr/bin/env inside the container: pyxis lets the image's values of MUJOCO_GL and
        # WANDB_MODE win over the host's, and srun would look a bare `python` up on the host
        cmd=(srun "${opts[@]}" "${HLRP_CONTAINER_ARGS[@]}" /usr/bin/env
            "PYTHONPATH=$HLRP_REPO/src" "MUJOCO_GL=$MUJOCO_GL" "WANDB_MODE=$WANDB_MODE"
            "HLRP_REPO=$HLRP_REPO" "$@")
    else
        cmd=(srun "${opts[@]}" "$@")
    fi
    hlrp_log "+ $(printf '%q ' "${cmd[@]}")"
    if [[ "${HLRP_REQUEUE:-0}" != 1 ]]; then
        "${cmd[@]}"
        return
    fi
    # in the background, so that the USR1 handler runs while the step is still going
    trap _hlrp_on_usr1 USR1
    "${cmd[@]}" &
    local pid=$! rc=0
    while :; do
        _hlrp_interrupted=0
        rc=0
        wait "$pid" || rc=$?
        # wait returns early (status > 128) when a trapped signal arrives while the step goes
        # on: wait again (for a step that has ended meanwhile, bash returns its saved status)
        ((_hlrp_interrupted)) || break
    done
    trap - USR1
    return "$rc"
}
