#!/usr/bin/env bash
# glore-jax on a Cloud TPU VM or pod slice: create (or reuse) it, install the project with the
# `tpu` extra on every worker, run one stage or the whole pipeline on all workers, copy an HF
# Llama-2 checkpoint in and the results out, delete it.
#
#   launch/tpu.sh [options] COMMAND [ARGS...]
#
# Commands
#   create                      create the TPU VM / slice; reuses it when it already exists
#   setup                       install uv (pinned: UV_VERSION), Python 3.11, this checkout
#                               (or --repo) and glore-jax[tpu] (jax's TPU runtime, gcsfs for
#                               gs://) on every worker
#   copy-in SRC DEST            copy an HF checkpoint folder (gs://... or a local folder) to DEST
#                               on every worker's local disk
#   run CONFIG [OVERRIDES...]   python -m glore_jax.main --config=CONFIG --workdir=WORKDIR
#                               OVERRIDES on all workers at once (one process per host)
#   stage NAME CONFIG [OVERRIDES...]
#                               the same, only stage NAME (--config.stages=NAME)
#   copy-out DEST [PATH...]     copy results from WORKDIR (default: evaluate timings.json) to DEST
#   ssh COMMAND                 run a shell command on every worker
#   status                      describe the TPU VM
#   delete                      delete the TPU VM
#
# Options (or the environment variables in brackets)
#   --name NAME          TPU VM name [TPU_NAME] (required)
#   --zone ZONE          zone, e.g. us-central2-b [ZONE] (required)
#   --project PROJECT    GCP project [PROJECT] (default: gcloud's configured project)
#   --accelerator TYPE   v4-8, v4-32, v5p-64, v5litepod-256, ... [ACCELERATOR] (default v4-8)
#   --version VERSION    TPU software version [TPU_VERSION] (default: by accelerator family)
#   --spot               create a Spot VM [SPOT=1]
#   --workdir DIR        work directory, best gs://BUCKET/run [WORKDIR]
#   --repo URL           install from this git URL instead of copying this checkout [REPO_URL]
#   --branch BRANCH      git branch or tag for --repo [BRANCH] (default main)
#   --dry-run            print the gcloud commands instead of running them [DRY_RUN=1]
#
# Example: Llama-2 7B on a v4-32 slice (4 hosts), outputs in a bucket
#   export TPU_NAME=glore ZONE=us-central2-b ACCELERATOR=v4-32 WORKDIR=gs://my-bucket/glore-7b
#   launch/tpu.sh create && launch/tpu.sh setup
#   launch/tpu.sh copy-in gs://my-bucket/Llama-2-7b-hf /tmp/Llama-2-7b-hf
#   launch/tpu.sh copy-in gs://my-bucket/gsm8k /tmp/gsm8k
#   launch/tpu.sh run configs/llama2_7b_gsm8k.py \
#       --config.model.checkpoint=/tmp/Llama-2-7b-hf --config.data.path=/tmp/gsm8k
#   launch/tpu.sh copy-out ./results-7b && launch/tpu.sh delete

set -euo pipefail

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
TPU_VERSION="${TPU_VERSION:-}"
SPOT="${SPOT:-0}"
WORKDIR="${WORKDIR:-}"
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
DRY_RUN="${DRY_RUN:-0}"
WORKERS="${WORKERS:-}"           # hosts in the slice; derived from the accelerator type if empty
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
# The installer is a pinned PyPI package (pip checks what it downloads), not a piped script.
UV_VERSION="${UV_VERSION:-0.13.8}"
REMOTE_DIR="glore-jax"           # on each worker, relative to the home directory
REMOTE_VENV="glore-venv"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HERE}/.." && pwd)"

die() {
  echo "launch/tpu.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# Runs a command, or prints it (shell-quoted, one line) in dry-run mode.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}

require() {
  [[ -n "${TPU_NAME}" ]] || die "set --name or TPU_NAME"
  [[ -n "${ZONE}" ]] || die "set --zone or ZONE"
}

# gcloud flags shared by every tpu-vm command
location_flags() {
  LOCATION=(--zone="${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    LOCATION+=(--project="${PROJECT}")
  fi
}

default_version() {
  case "${ACCELERATOR}" in
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# Hosts (TPU VM workers) of a slice: v2-v5p count TensorCores (8 per host), v5e/v6e count chips
# (4 per host above 8 chips).
worker_count() {
  if [[ -n "${WORKERS}" ]]; then
    echo "${WORKERS}"
    return
  fi
  local size="${ACCELERATOR##*-}"
  [[ "${size}" =~ ^[0-9]+$ ]] || die "cannot read the size of accelerator ${ACCELERATOR}; set WORKERS"
  case "${ACCELERATOR}" in
    v5litepod-* | v5e-* | v6e-*)
      if ((size <= 8)); then echo 1; else echo $((size / 4)); fi ;;
    *)
      if ((size <= 8)); then echo 1; else echo $((size / 8)); fi ;;
  esac
}

# Runs a shell command on every worker of the slice.
on_all_workers() {
  require
  location_flags
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${LOCATION[@]}" --worker=all --command="$1"
}

cmd_create() {
  require
  location_flags
  local version="${TPU_VERSION:-$(default_version)}"
  local create=(gcloud compute tpus tpu-vm create "${TPU_NAME}" "${LOCATION[@]}"
                --accelerator-type="${ACCELERATOR}" --version="${version}")
  if [[ "${SPOT}" == "1" ]]; then
    create+=(--spot)
  fi
  if [[ "${DRY_RUN}" == "1" ]]; then
    run gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${LOCATION[@]}" --format=value\(state\)
    run "${create[@]}"
  elif gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${LOCATION[@]}" --format='value(state)' \
      >/dev/null 2>&1; then
    echo "TPU VM ${TPU_NAME} exists in ${ZONE}: reusing it" >&2
  else
    run "${create[@]}"
  fi
}

cmd_setup() {
  require
  location_flags
  local fetch
  if [[ -n "${REPO_URL}" ]]; then
    fetch="rm -rf \$HOME/${REMOTE_DIR} && git clone --depth 1 --branch $(printf '%q' "${BRANCH}") $(printf '%q' "${REPO_URL}") \$HOME/${REMOTE_DIR}"
  else
    # this checkout as it is now (tracked and untracked files, .gitignore respected)
    ARCHIVE="${TMPDIR:-/tmp}/glore-jax-$$.tar.gz"
    local archive="${ARCHIVE}"
    if [[ "${DRY_RUN}" == "1" ]]; then
      echo "# tar of $(printf '%q' "${REPO_ROOT}") (git ls-files -co --exclude-standard) -> ${archive}"
    else
      (cd "${REPO_ROOT}" && git ls-files -co --exclude-standard -z | tar --null -czf "${archive}" -T -)
      trap 'rm -f "${ARCHIVE}"' EXIT
    fi
    run gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:~/glore-jax.tar.gz" "${LOCATION[@]}" \
      --worker=all
    fetch="rm -rf \$HOME/${REMOTE_DIR} && mkdir -p \$HOME/${REMOTE_DIR} && tar -xzf \$HOME/glore-jax.tar.gz -C \$HOME/${REMOTE_DIR}"
  fi
  local script
  script="set -euo pipefail; "
  script+="export PATH=\$HOME/.local/bin:\$PATH; "
  script+="uv --version 2>/dev/null | grep -qx 'uv ${UV_VERSION}' || python3 -m pip install --user --quiet 'uv==${UV_VERSION}'; "
  script+="${fetch}; "
  [[ "${PYTHON_VERSION}" =~ ^[0-9]+(\.[0-9]+){0,2}$ ]] || die "PYTHON_VERSION=${PYTHON_VERSION@Q}: expected a version such as 3.11"
  script+="uv venv --allow-existing --python $(printf '%q' "${PYTHON_VERSION}") \$HOME/${REMOTE_VENV}; "
  script+="uv pip install --python \$HOME/${REMOTE_VENV}/bin/python -e \"\$HOME/${REMOTE_DIR}[tpu]\"; "
  script+="\$HOME/${REMOTE_VENV}/bin/python -c 'import jax, glore_jax; print(jax.__version__, glore_jax.__version__)'"
  on_all_workers "${script}"
}

cmd_copy_in() {
  [[ $# -eq 2 ]] || die "usage: copy-in SRC DEST (SRC: gs://bucket/folder or a local folder)"
  local src="$1" dest="$2"
  if [[ "${src}" == gs://* ]]; then
    on_all_workers "set -euo pipefail; mkdir -p $(printf '%q' "${dest}"); gcloud storage rsync --recursive $(printf '%q' "${src%/}") $(printf '%q' "${dest}")"
  else
    require
    location_flags
    # the remote side of an scp path goes through the remote shell: quote it for that shell
    run gcloud compute tpus tpu-vm scp --recurse "${src%/}" "${TPU_NAME}:$(printf '%q' "${dest}")" "${LOCATION[@]}" --worker=all
  fi
}

cmd_run() {
  [[ $# -ge 1 ]] || die "usage: run CONFIG [--config.KEY=VALUE ...]"
  [[ -n "${WORKDIR}" ]] || die "set --workdir or WORKDIR (gs://BUCKET/run is shared by all workers)"
  local config="$1"
  shift
  local workers
  workers="$(worker_count)"
  if [[ "${workers}" -gt 1 && "${WORKDIR}" != gs://* ]]; then
    echo "launch/tpu.sh: warning: ${workers} workers share no local disk; use a gs:// WORKDIR" >&2
  fi
  local args=(-m glore_jax.main --config="${config}" --workdir="${WORKDIR}" "$@")
  local quoted
  printf -v quoted '%q ' "${args[@]}"
  local env="PYTHONUNBUFFERED=1"
  if [[ "${workers}" -gt 1 ]]; then
    env+=" GLORE_MULTIHOST=1"  # jax.distributed.initialize() on every host of the slice
  fi
  on_all_workers "set -euo pipefail; cd \$HOME/${REMOTE_DIR}; ${env} \$HOME/${REMOTE_VENV}/bin/python ${quoted% } 2>&1 | tee -a \$HOME/glore-run.log"
}

cmd_stage() {
  [[ $# -ge 2 ]] || die "usage: stage NAME CONFIG [--config.KEY=VALUE ...]"
  local stage="$1" config="$2"
  shift 2
  cmd_run "${config}" --config.stages="${stage}" "$@"
}

cmd_copy_out() {
  [[ $# -ge 1 ]] || die "usage: copy-out DEST [PATH ...] (paths inside WORKDIR)"
  [[ -n "${WORKDIR}" ]] || die "set --workdir or WORKDIR"
  local dest="$1"
  shift
  local paths=("$@")
  if [[ ${#paths[@]} -eq 0 ]]; then
    paths=(evaluate timings.json)
  fi
  run mkdir -p "${dest}"
  local path
  for path in "${paths[@]}"; do
    if [[ "${WORKDIR}" == gs://* ]]; then
      run gcloud storage cp -r "${WORKDIR%/}/${path}" "${dest}/"
    else
      require
      location_flags
      run gcloud compute tpus tpu-vm scp --recurse "${TPU_NAME}:$(printf '%q' "${WORKDIR%/}/${path}")" "${dest}/" \
        "${LOCATION[@]}" --worker=0
    fi
  done
}

cmd_status() {
  require
  location_flags
  run gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${LOCATION[@]}"
}

cmd_delete() {
  require
  location_flags
  run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${LOCATION[@]}" --quiet
}

main() {
  while [[ $# -gt 0 ]]; do
    if [[ "$1" =~ ^--(name|zone|project|accelerator|version|workdir|repo|branch)=(.*)$ ]]; then
      set -- "--${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${@:2}"
    fi
    case "$1" in
      --dry-run) DRY_RUN=1; shift ;;
      --spot) SPOT=1; shift ;;
      --name) TPU_NAME="${2:?--name needs a value}"; shift 2 ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
      --version) TPU_VERSION="${2:?--version needs a value}"; shift 2 ;;
      --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
      --repo) REPO_URL="${2:?--repo needs a value}"; shift 2 ;;
      --branch) BRANCH="${2:?--branch needs a value}"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $1 (see launch/tpu.sh --help)" ;;
      *) break ;;
    esac
  done
  [[ $# -ge 1 ]] || { usage >&2; exit 2; }
  local command="$1"
  shift
  case "${command}" in
    create) cmd_create "$@" ;;
    setup) cmd_setup "$@" ;;
    copy-in) cmd_copy_in "$@" ;;
    run) cmd_run "$@" ;;
    stage) cmd_stage "$@" ;;
    copy-out) cmd_copy_out "$@" ;;
    ssh) [[ $# -ge 1 ]] || die "usage: ssh COMMAND"; on_all_workers "$*" ;;
    status) cmd_status "$@" ;;
    delete) cmd_delete "$@" ;;
    *) die "unknown command ${command} (see launch/tpu.sh --help)" ;;
  esac
}

main "$@"
