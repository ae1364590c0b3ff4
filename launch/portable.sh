#!/usr/bin/env bash
# Run through Beam's portable runner: the job service protocol Flink and Spark
# use. JOB_ENDPOINT=embed runs an in-process Python job service (no download);
# point it at a running job server (host:port) otherwise.
#   launch/portable.sh --model=... --input=... --output=... \
#     [--environment_type=EXTERNAL --environment_config=localhost:50000]
SCRIPT=launch/portable.sh
PARAMS=(MODEL INPUT OUTPUT JOB_ENDPOINT ENVIRONMENT_TYPE ENVIRONMENT_CONFIG PARALLELISM)
: "${JOB_ENDPOINT:=embed}" "${ENVIRONMENT_TYPE:=LOOPBACK}"
source "$(dirname "$0")/common.sh"
parse_args "$@"
require MODEL INPUT OUTPUT
if [ "$ENVIRONMENT_TYPE" = EXTERNAL ]; then require ENVIRONMENT_CONFIG; fi
args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=PortableRunner
      --job_endpoint="$JOB_ENDPOINT" --environment_type="$ENVIRONMENT_TYPE")
optional args ENVIRONMENT_CONFIG --environment_config
optional args PARALLELISM --parallelism
run_job "${args[@]}"
