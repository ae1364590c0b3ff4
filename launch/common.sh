# Shared by the launch scripts (sourced, not run). A script sets SCRIPT, PARAMS
# (variable names; the flag of VAR_NAME is --var_name) and defaults, then calls
# parse_args "$@", require VAR..., and run_job JOB_FLAGS...
#
# Every parameter comes from a flag (--project=ID) or an environment variable
# (PROJECT=ID), the flag winning. Arguments that are not parameters pass
# through to the job unchanged. --print_only prints the command instead of
# running it.
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

parse_args() {
  local arg name var
  for arg in "$@"; do
    case "$arg" in
      --print_only) PRINT_ONLY=1 ;;
      -h|--help) usage; exit 0 ;;
      --*=*)
        name=${arg%%=*}
        var=$(echo "${name#--}" | tr '[:lower:]' '[:upper:]')
        if [[ " ${PARAMS[*]} " == *" $var "* ]]; then
          printf -v "$var" '%s' "${arg#*=}"
        else
          EXTRA_ARGS+=("$arg")
        fi ;;
      *) EXTRA_ARGS+=("$arg") ;;
    esac
  done
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

run_job() {
  local cmd=("$PYTHON" -m pipeline "$@" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")
  if [ "$PRINT_ONLY" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
  else
    exec "${cmd[@]}"
  fi
}
