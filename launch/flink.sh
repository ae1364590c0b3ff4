#!/usr/bin/env bash
# Submit the job to a Flink cluster with Beam's FlinkRunner.
#   launch/flink.sh --flink_master=HOST:8081 --sdk_container_image=IMAGE \
#     --model=... --input=... --output=...
# Flink's workers run Beam's Python SDK harness. Beam's default image holds neither this
# package nor TensorFlow, so the workers need one of:
#   DOCKER (default): an image built from launch/Dockerfile for the launcher's Python
#     version (`make image IMAGE=...` builds it), given as --sdk_container_image;
#   EXTERNAL: a worker pool on each Flink task manager, started in an environment where
#     this package is installed (pip install .): python -m
#     apache_beam.runners.worker.worker_pool_main --service_port=50000, given as
#     --environment_type=EXTERNAL --environment_config=localhost:50000;
#   PROCESS: --environment_config='{"command": "/path/to/boot"}' of such an environment.
# Beam starts a Flink job server from a jar it downloads from Maven. On machines without
# Maven access, download beam-runners-flink-<FLINK_VERSION>-job-server (the jar matching
# Beam 2.77 and your Flink version) where you can, copy it here, and pass
# FLINK_JOB_SERVER_JAR=/path/to/jar (or --flink_job_server_jar).
SCRIPT=launch/flink.sh
PARAMS=(MODEL INPUT OUTPUT FLINK_MASTER PARALLELISM ENVIRONMENT_TYPE SDK_CONTAINER_IMAGE
        ENVIRONMENT_CONFIG FLINK_VERSION FLINK_JOB_SERVER_JAR)
: "${PARALLELISM:=2}" "${ENVIRONMENT_TYPE:=DOCKER}"
source "$(dirname "$0")/common.sh"
parse_args "$@"

# Every missing value is one line, then exit 2 (as `require`).
missing=0
(require MODEL INPUT OUTPUT FLINK_MASTER) || missing=1
case "$ENVIRONMENT_TYPE" in
  DOCKER)
    if [ -z "${SDK_CONTAINER_IMAGE:-}" ]; then
      if [ -n "${ENVIRONMENT_CONFIG:-}" ]; then
        SDK_CONTAINER_IMAGE=$ENVIRONMENT_CONFIG  # Beam's own way to name the image
      else
        python_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        echo "$SCRIPT: missing --sdk_container_image (or environment variable SDK_CONTAINER_IMAGE):" \
             "Beam's default worker image has neither this package nor TensorFlow; build one" \
             "with: make image IMAGE=NAME (docker build -f launch/Dockerfile" \
             "--build-arg PYTHON_VERSION=$python_version -t NAME .), or use a worker pool:" \
             "--environment_type=EXTERNAL --environment_config=HOST:PORT (README, On Flink)" >&2
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

args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=FlinkRunner
      --flink_master="$FLINK_MASTER" --parallelism="$PARALLELISM"
      --environment_type="$ENVIRONMENT_TYPE")
if [ "$ENVIRONMENT_TYPE" = DOCKER ]; then
  # Beam's portable runners take the image from --environment_config; its
  # --sdk_container_image is read by Dataflow only.
  args+=(--environment_config="$SDK_CONTAINER_IMAGE")
else
  args+=(--environment_config="$ENVIRONMENT_CONFIG")
fi
optional args FLINK_VERSION --flink_version
optional args FLINK_JOB_SERVER_JAR --flink_job_server_jar
run_job "${args[@]}"
