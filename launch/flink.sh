#!/usr/bin/env bash
# Submit the job to a Flink cluster with Beam's FlinkRunner.
#   launch/flink.sh --flink_master=HOST:8081 --model=... --input=... --output=...
# Beam starts a Flink job server from a jar it downloads from Maven. On machines
# without Maven access, download beam-runners-flink-<FLINK_VERSION>-job-server
# (the jar matching Beam 2.77 and your Flink version) where you can, copy it
# here, and pass FLINK_JOB_SERVER_JAR=/path/to/jar (or --flink_job_server_jar).
# Workers run as ENVIRONMENT_TYPE: DOCKER (Beam's SDK image, or yours from
# launch/Dockerfile via ENVIRONMENT_CONFIG), PROCESS, or EXTERNAL (a worker
# pool: ENVIRONMENT_CONFIG=host:port).
SCRIPT=launch/flink.sh
PARAMS=(MODEL INPUT OUTPUT FLINK_MASTER PARALLELISM ENVIRONMENT_TYPE ENVIRONMENT_CONFIG
        FLINK_VERSION FLINK_JOB_SERVER_JAR)
: "${PARALLELISM:=2}" "${ENVIRONMENT_TYPE:=DOCKER}"
source "$(dirname "$0")/common.sh"
parse_args "$@"
require MODEL INPUT OUTPUT FLINK_MASTER
args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=FlinkRunner
      --flink_master="$FLINK_MASTER" --parallelism="$PARALLELISM"
      --environment_type="$ENVIRONMENT_TYPE")
optional args ENVIRONMENT_CONFIG --environment_config
optional args FLINK_VERSION --flink_version
optional args FLINK_JOB_SERVER_JAR --flink_job_server_jar
run_job "${args[@]}"
