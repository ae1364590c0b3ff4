#!/usr/bin/env bash
# Run the job on this machine (Beam's FnApiRunner: no runner download).
#   launch/local.sh --model=DIR --input='data/*.jsonl' --output=out [job options]
SCRIPT=launch/local.sh
PARAMS=(MODEL INPUT OUTPUT DIRECT_NUM_WORKERS DIRECT_RUNNING_MODE)
: "${DIRECT_NUM_WORKERS:=1}" "${DIRECT_RUNNING_MODE:=in_memory}"
source "$(dirname "$0")/common.sh"
parse_args "$@"
require MODEL INPUT OUTPUT
run_job --model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=FnApiRunner \
  --direct_num_workers="$DIRECT_NUM_WORKERS" --direct_running_mode="$DIRECT_RUNNING_MODE"
