#!/usr/bin/env bash
# Submit the job to Spark with Beam's SparkRunner.
#   launch/spark.sh --spark_master_url=spark://HOST:7077 --environment_type=EXTERNAL \
#     --environment_config=localhost:50000 --model=... --input=... --output=...
# SPARK_MASTER_URL is a standalone cluster's master (spark://HOST:PORT), or local[N] for
# N threads inside the job server, on this machine.
# Spark's executors run Beam's Python SDK harness: as for Flink (launch/flink.sh), an
# EXTERNAL worker pool started where this package is installed, a DOCKER image from
# launch/Dockerfile (the default), or a PROCESS command.
# The job server: SPARK_JOB_SERVER_JAR, by default the one `make engines` builds (Beam's
# runner with Spark 3.5, Scala 2.12: the cluster must run Spark 3.5). Without a jar, Beam
# downloads its own Spark 3 job server.
SCRIPT=launch/spark.sh
PARAMS=(MODEL INPUT OUTPUT SPARK_MASTER_URL ENVIRONMENT_TYPE SDK_CONTAINER_IMAGE
        ENVIRONMENT_CONFIG SPARK_JOB_SERVER_JAR)
source "$(dirname "$0")/common.sh"
: "${ENVIRONMENT_TYPE:=DOCKER}"
: "${SPARK_JOB_SERVER_JAR:=$(built_jar beam-runners-spark-3-job-server-2.62.0.jar)}"
parse_args "$@"

environment=()
require_with_environment environment MODEL INPUT OUTPUT SPARK_MASTER_URL

args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=SparkRunner
      --spark_master_url="$SPARK_MASTER_URL" "${environment[@]}")
optional args SPARK_JOB_SERVER_JAR --spark_job_server_jar
run_job "${args[@]}"
