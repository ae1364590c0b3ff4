# Shared by the launch scripts (sourced, not run). A script sets SCRIPT, PARAMS
# (variable names; the flag of VAR_NAME is --var_name) and defaults, then calls
# parse_args "$@", require VAR..., and run_job JOB_FLAGS...
#
# Every parameter comes from a flag (--project=ID or --project ID) or an
# environment variable (PROJECT=ID), the flag winning. Arguments that are not
# parameters pass through to the job unchanged, and replace a script default
# of the same option (--worker_machine_type replaces the script's
# --machine_type). --print_only prints the command instead of running it.
# The yes/no parameters (--print_only, --skip_preflight) are given as --flag,
# --flag=VALUE or VAR=VALUE, VALUE one of true/1/yes/on or false/0/no/off/''
# (any case); anything else is one line and exit 2. Such a flag never takes
# the next word as its value, and a word that is no option's value is one
# line and exit 2 (the job takes none).
#
# A job submitted to a cluster (its --runner, the user's or the script's, is
# not a local one: DataflowRunner, FlinkRunner, PortableRunner, ...) gets
# --preflight: before anything is submitted, the job reads a sample of the
# input, scores it here, prints what it found and stops if none of it can be
# scored. --skip_preflight (or SKIP_PREFLIGHT=1) leaves it out.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LAUNCH_DIR")
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO_DIR/.venv/bin/python" ]; then PYTHON=$REPO_DIR/.venv/bin/python; else PYTHON=python3; fi
fi
PRINT_ONLY=${PRINT_ONLY:-}
SKIP_PREFLIGHT=${SKIP_PREFLIGHT:-}
EXTRA_ARGS=()

flag_of() { echo "--$(echo "$1" | tr '[:upper:]' '[:lower:]')"; }

usage() {
  echo "usage: $SCRIPT [--print_only] [--skip_preflight] [--param=value ...] [job or Beam options ...]"
  echo "  --print_only       print the command instead of running it (PRINT_ONLY=1)"
  echo "  --skip_preflight   submitting to a cluster, do not check a sample of the input"
  echo "                     here first (SKIP_PREFLIGHT=1; the job's --preflight is added"
  echo "                     for any runner that is not local)"
  echo "  (either: --flag, --flag=VALUE or VAR=VALUE; VALUE true/1/yes/on or false/0/no/off)"
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

# Sets the yes/no parameter VAR to 1 or 0 from VALUE (true/1/yes/on,
# false/0/no/off or empty, any case); anything else: one line naming WHERE
# it came from, exit 2.
set_bool() {
  local var=$1 value=$2 where=$3
  case "$(echo "$value" | tr '[:upper:]' '[:lower:]')" in
    1|true|yes|on) printf -v "$var" 1 ;;
    0|false|no|off|'') printf -v "$var" 0 ;;
    *) echo "$SCRIPT: $where: '$value' is neither true/1/yes/on nor false/0/no/off" >&2
       exit 2 ;;
  esac
}

# Accepts --name=value and --name value alike, for parameters and for the
# options passed through; yes/no parameters as --flag or --flag=VALUE.
parse_args() {
  local arg name var previous=""
  set_bool PRINT_ONLY "$PRINT_ONLY" "environment variable PRINT_ONLY"
  set_bool SKIP_PREFLIGHT "$SKIP_PREFLIGHT" "environment variable SKIP_PREFLIGHT"
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    case "$arg" in
      --print_only) PRINT_ONLY=1 ;;
      --print_only=*) set_bool PRINT_ONLY "${arg#*=}" --print_only ;;
      --skip_preflight) SKIP_PREFLIGHT=1 ;;
      --skip_preflight=*) set_bool SKIP_PREFLIGHT "${arg#*=}" --skip_preflight ;;
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
      *)
        # No option's value (the job takes no other argument): say so here
        # rather than pass it on.
        case "$previous" in
          --print_only|--skip_preflight)
            echo "$SCRIPT: unexpected argument '$arg': $previous takes no separate value" \
                 "(give $previous=$arg)" >&2 ;;
          *) echo "$SCRIPT: unexpected argument '$arg' (options are --name=VALUE or" \
                  "--name VALUE)" >&2 ;;
        esac
        exit 2 ;;
    esac
    previous=$arg
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

# Where a Flink or Spark job's Python workers come from (flink.sh, spark.sh):
# checks ENVIRONMENT_TYPE, SDK_CONTAINER_IMAGE and ENVIRONMENT_CONFIG, one line
# per problem then exit 2; adds the options to the named array.
worker_environment() {
  local -n into=$1
  local missing=0
  case "$ENVIRONMENT_TYPE" in
    DOCKER)
      if [ -z "${SDK_CONTAINER_IMAGE:-}" ]; then
        if [ -n "${ENVIRONMENT_CONFIG:-}" ]; then
          SDK_CONTAINER_IMAGE=$ENVIRONMENT_CONFIG  # Beam's own way to name the image
        else
          local python_version
          python_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
          echo "$SCRIPT: missing --sdk_container_image (or environment variable SDK_CONTAINER_IMAGE):" \
               "Beam's default worker image has neither this package nor TensorFlow; build one" \
               "with: make image IMAGE=NAME (docker build -f launch/Dockerfile" \
               "--build-arg PYTHON_VERSION=$python_version -t NAME .), or use a worker pool:" \
               "--environment_type=EXTERNAL --environment_config=HOST:PORT (docs/at-scale.md)" >&2
          missing=1
        fi
      elif [ -n "${ENVIRONMENT_CONFIG:-}" ] && [ "$ENVIRONMENT_CONFIG" != "$SDK_CONTAINER_IMAGE" ]; then
        echo "$SCRIPT: --sdk_container_image and --environment_config name different images;" \
             "give one" >&2
        exit 2
      fi ;;
    EXTERNAL|PROCESS)
      (require ENVIRONMENT_CONFIG) || missing=1 ;;
    *)
      echo "$SCRIPT: --environment_type: '$ENVIRONMENT_TYPE' is not DOCKER, EXTERNAL or PROCESS" >&2
      exit 2 ;;
  esac
  [ "$missing" = 0 ] || exit 2
  into+=(--environment_type="$ENVIRONMENT_TYPE")
  if [ "$ENVIRONMENT_TYPE" = DOCKER ]; then
    # Beam's portable runners take the image from --environment_config; its
    # --sdk_container_image is read by Dataflow only.
    into+=(--environment_config="$SDK_CONTAINER_IMAGE")
  else
    into+=(--environment_config="$ENVIRONMENT_CONFIG")
  fi
}

# require VARS... and worker_environment ARRAY together: every problem of both
# is one line, then exit 2.
require_with_environment() {
  local array=$1 missing=0
  shift
  (require "$@") || missing=1
  (worker_environment "$array") || missing=1
  [ "$missing" = 0 ] || exit 2
  worker_environment "$array"
}

# The job-server jar `make engines` builds, when it is there.
ENGINES_DIR=${BATCH_PREDICT_ENGINES:-$REPO_DIR/.cache/engines}
built_jar() {
  if [ -f "$ENGINES_DIR/$1" ]; then echo "$ENGINES_DIR/$1"; fi
}

# Runners that run the job on this machine (Beam's names, lower case, without
# "runner"): every other one submits it to a cluster.
LOCAL_RUNNERS=" direct fnapi bundlebaseddirect switchingdirect testdirect interactive prism pythonrpcdirect "

is_true() {
  case "$(echo "${1:-}" | tr '[:upper:]' '[:lower:]')" in
    1|true|yes|on) return 0 ;;
    *) return 1 ;;
  esac
}

# Whether the job's arguments name a runner that submits to a cluster (the
# last --runner counts; none: the job's local default).
submits_to_cluster() {
  local runner="" arg previous=""
  for arg in "$@"; do
    case "$arg" in
      --runner=*) runner=${arg#*=} ;;
    esac
    if [ "$previous" = --runner ]; then runner=$arg; fi
    previous=$arg
  done
  runner=$(echo "$runner" | tr '[:upper:]' '[:lower:]')
  runner=${runner%runner}
  [ -n "$runner" ] && [[ "$LOCAL_RUNNERS" != *" $runner "* ]]
}

# Runs the job with the script's options, less those the user also gave
# (the user's win), then the user's own options; with --preflight where it
# is submitted to a cluster (unless --skip_preflight).
run_job() {
  local given=" " arg kept=()
  for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
    if [[ "$arg" == --* ]]; then given+="$(canonical_flag "$arg") "; fi
  done
  for arg in "$@"; do
    if [[ "$given" != *" $(canonical_flag "$arg") "* ]]; then kept+=("$arg"); fi
  done
  local job=("${kept[@]+"${kept[@]}"}" "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")
  if ! is_true "$SKIP_PREFLIGHT" && [[ " $given " != *" --preflight "* ]] \
      && submits_to_cluster "${job[@]+"${job[@]}"}"; then
    job+=(--preflight)
  fi
  local cmd=("$PYTHON" -m tf_batch_predict.pipeline "${job[@]+"${job[@]}"}")
  if is_true "$PRINT_ONLY"; then
    printf '%q ' "${cmd[@]}"
    echo
  else
    exec "${cmd[@]}"
  fi
}
