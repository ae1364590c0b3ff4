#!/usr/bin/env bash
# Submit the job to a Flink cluster with Beam's FlinkRunner.
#   launch/flink.sh --flink_master=HOST:8081 --environment_type=EXTERNAL \
#     --environment_config=localhost:50000 --model=... --input=... --output=...
# FLINK_MASTER is the cluster's REST address (HOST:PORT), or [local] for a Flink
# cluster inside the job server, on this machine.
# Flink's workers run Beam's Python SDK harness. Beam's default image holds neither this
# package nor TensorFlow, so the workers need one of:
#   EXTERNAL: a worker pool on each Flink task manager, started in an environment where
#     this package is installed, with that environment's bin first on PATH:
#     python -m apache_beam.runners.worker.worker_pool_main --service_port=50000,
#     given as --environment_type=EXTERNAL --environment_config=localhost:50000;
#   DOCKER (default): an image built from launch/Dockerfile for the launcher's Python
#     version (`make image IMAGE=...` builds it), given as --sdk_container_image;
#   PROCESS: --environment_config='{"command": "/path/to/boot"}' of such an environment.
# The job server: FLINK_JOB_SERVER_JAR, by default the one `make engines` builds
# (Beam's runner for Flink 1.19, so FLINK_VERSION 1.19: it must match the cluster's
# Flink version). Without a jar, Beam downloads the job server for FLINK_VERSION.
# SDK_WORKER_PARALLELISM Python workers run on each task manager: give it the task
# managers' slots (taskmanager.numberOfTaskSlots); by default PARALLELISM for [local]
# (one task manager with every slot), else 1.
# Restarts: a cluster's own configuration (restart-strategy.*) decides; for [local],
# FLINK_CONF_DIR (default launch/flink-local: up to 3 restarts).
SCRIPT=launch/flink.sh
PARAMS=(MODEL INPUT OUTPUT FLINK_MASTER PARALLELISM SDK_WORKER_PARALLELISM ENVIRONMENT_TYPE
        SDK_CONTAINER_IMAGE ENVIRONMENT_CONFIG FLINK_VERSION FLINK_JOB_SERVER_JAR)
source "$(dirname "$0")/common.sh"
: "${PARALLELISM:=2}" "${ENVIRONMENT_TYPE:=DOCKER}"
: "${FLINK_VERSION:=1.19}"
: "${FLINK_JOB_SERVER_JAR:=$(built_jar beam-runners-flink-1.19-job-server-2.62.0.jar)}"
parse_args "$@"
if [ "${FLINK_MASTER:-}" = '[local]' ] && [ -z "${FLINK_CONF_DIR:-}" ]; then
  export FLINK_CONF_DIR=$LAUNCH_DIR/flink-local  # restarts a failed job (see its config.yaml)
fi
if [ -z "${SDK_WORKER_PARALLELISM:-}" ]; then
  if [ "${FLINK_MASTER:-}" = '[local]' ]; then SDK_WORKER_PARALLELISM=$PARALLELISM; else SDK_WORKER_PARALLELISM=1; fi
fi

environment=()
require_with_environment environment MODEL INPUT OUTPUT FLINK_MASTER

args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=FlinkRunner
      --flink_master="$FLINK_MASTER" --parallelism="$PARALLELISM"
      --sdk_worker_parallelism="$SDK_WORKER_PARALLELISM" --flink_version="$FLINK_VERSION"
      "${environment[@]}")
optional args FLINK_JOB_SERVER_JAR --flink_job_server_jar
run_job "${args[@]}"
