# Shared by the launch scripts (sourced, not run). A script sets SCRIPT, PARAMS
# (variable names; the flag of VAR_NAME is --var_name) and defaults, then calls
# parse_args "$@", require VAR..., and run_job JOB_FLAGS...
#
# Every parameter comes from a flag (--project=ID or --project ID) or an
# environment variable (PROJECT=ID), the flag winning. Arguments that are not
# parameters pass through to the job unchanged, and replace a script default
# of the same option (--worker_machine_type replaces the script's
# --machine_type). --print_only prints the command instead of running it.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LAUNCH_DIR")
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO_DIR/.venv/bin/python" ]; then PYTHON=$REPO_DIR/.venv/bin/python; else PYTHON=python3; fi
fi
PRINT_ONLY=${PRINT_ONLY:-0}
EXTRA_ARGS=()

flag_of() { echo "--$(echo "$1" | tr '[:upper:]' '[:lower:]')"; }

usage() {
  echo "usage: $SCRIPT [--print_only] [--param=value ...] [job or Beam options ...]"
  echo "parameters (flag or environment variable, with defaults):"
  for var in "${PARAMS[@]}"; do
    printf '  %-28s %-22s %s\n' "$(flag_of "$var")" "$var" "${!var:-}"
  done
}

# Beam option names that set the same option as another (the second is the
# one the scripts write).
ALIASES=(--worker_machine_type=--machine_type --num_workers_max=--max_num_workers
         --worker_harness_container_image=--sdk_container_image
         --service_account=--service_account_email)

# Accepts --name=value and --name value alike, for parameters and for the
# options passed through.
parse_args() {
  local arg name var
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    case "$arg" in
      --print_only) PRINT_ONLY=1 ;;
      -h|--help) usage; exit 0 ;;
      --*)
        name=${arg%%=*}
        var=$(echo "${name#--}" | tr '[:lower:]' '[:upper:]')
        if [[ " ${PARAMS[*]} " == *" $var "* ]]; then
          if [[ "$arg" == *=* ]]; then
            printf -v "$var" '%s' "${arg#*=}"
          elif [ $# -gt 0 ]; then
            printf -v "$var" '%s' "$1"
            shift
          else
            echo "$SCRIPT: $name needs a value ($name=VALUE or $name VALUE)" >&2
            exit 2
          fi
        else
          EXTRA_ARGS+=("$arg")
          # `--flag value`: the value travels with its flag.
          if [[ "$arg" != *=* && $# -gt 0 && "$1" != --* ]]; then
            EXTRA_ARGS+=("$1")
            shift
          fi
        fi ;;
      *) EXTRA_ARGS+=("$arg") ;;
    esac
  done
}

canonical_flag() {
  local flag=${1%%=*} alias
  for alias in "${ALIASES[@]}"; do
    if [ "$flag" = "${alias%%=*}" ]; then flag=${alias#*=}; fi
  done
  echo "$flag"
}

# Checks every named parameter; one line per missing value, then exit 2.
require() {
  local var missing=0
  for var in "$@"; do
    if [ -z "${!var:-}" ]; then
      echo "$SCRIPT: missing $(flag_of "$var") (or environment variable $var)" >&2
      missing=1
    fi
  done
  [ "$missing" = 0 ] || exit 2
}

# Adds --flag=value to the named array when the parameter is set.
optional() {
  local -n into=$1
  local var=$2 flag=$3
  if [ -n "${!var:-}" ]; then into+=("$flag=${!var}"); fi
}

# Runs the job with the script's options, less those the user also gave
# (the user's win), then the user's own options.
run_job() {
  local given=" " arg kept=()
  for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
    if [[ "$arg" == --* ]]; then given+="$(canonical_flag "$arg") "; fi
  done
  for arg in "$@"; do
    if [[ "$given" != *" $(canonical_flag "$arg") "* ]]; then kept+=("$arg"); fi
  done
  local cmd=("$PYTHON" -m pipeline "${kept[@]+"${kept[@]}"}" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")
  if [ "$PRINT_ONLY" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
  else
    exec "${cmd[@]}"
  fi
}
