#!/usr/bin/env bash
# Submit the job to Dataflow. Workers install this package from setup.py
# (--setup_file), or use a custom container (SDK_CONTAINER_IMAGE; see
# launch/Dockerfile).
#   launch/dataflow.sh --project=P --region=us-central1 --temp_location=gs://B/tmp \
#     --model=gs://B/model --input='gs://B/in/*.jsonl' --output=gs://B/out [job options]
# GPU workers: add --dataflow_service_options='worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver'
# with a GPU machine type and a container that has CUDA (see docs/running.md).
SCRIPT=launch/dataflow.sh
PARAMS=(MODEL INPUT OUTPUT PROJECT REGION TEMP_LOCATION STAGING_LOCATION MACHINE_TYPE
        MAX_WORKERS SERVICE_ACCOUNT NETWORK SUBNETWORK JOB_NAME SETUP_FILE
        SDK_CONTAINER_IMAGE THREADS_PER_WORKER)
: "${REGION:=us-central1}" "${MACHINE_TYPE:=n2-standard-4}" "${MAX_WORKERS:=10}"
: "${JOB_NAME:=batch-predict-$(date +%Y%m%d-%H%M%S)}"
source "$(dirname "$0")/common.sh"
: "${SETUP_FILE:=$REPO_DIR/setup.py}"
parse_args "$@"
require MODEL INPUT OUTPUT PROJECT REGION TEMP_LOCATION

# The patterns of a comma-separated --input, one a line, as the job splits
# them (pipeline/options.py: a comma inside [...] belongs to its pattern).
split_patterns() {
  local text=$1 i=0 j start=0 rest
  while [ "$i" -lt "${#text}" ]; do
    if [ "${text:i:1}" = '[' ]; then
      j=$((i + 1))
      if [ "${text:j:1}" = '!' ]; then j=$((j + 1)); fi
      if [ "${text:j:1}" = ']' ]; then j=$((j + 1)); fi
      rest=${text:j}
      if [[ "$rest" == *']'* ]]; then rest=${rest%%]*}; i=$((j + ${#rest})); fi
    elif [ "${text:i:1}" = ',' ]; then
      echo "${text:start:i-start}"
      start=$((i + 1))
    fi
    i=$((i + 1))
  done
  echo "${text:start}"
}

# Dataflow's workers cannot reach this machine's files: a local path would
# fail only there, once the job has started.
for var in MODEL INPUT OUTPUT TEMP_LOCATION STAGING_LOCATION; do
  if [ "$var" = INPUT ]; then paths=$(split_patterns "$INPUT"); else paths=${!var:-}; fi
  while IFS= read -r path; do
    path=${path#"${path%%[![:space:]]*}"}  # as the job strips it
    path=${path%"${path##*[![:space:]]}"}
    if [ -n "$path" ] && [[ "$path" != gs://* ]]; then
      echo "$SCRIPT: $(flag_of "$var"): $path is not a gs:// path; paths must be gs:// on" \
           "Dataflow (its workers cannot reach this machine's files)" >&2
      exit 2
    fi
  done <<< "$paths"
done
args=(--model="$MODEL" --input="$INPUT" --output="$OUTPUT" --runner=DataflowRunner
      --project="$PROJECT" --region="$REGION" --temp_location="$TEMP_LOCATION"
      --staging_location="${STAGING_LOCATION:-$TEMP_LOCATION}" --job_name="$JOB_NAME"
      --machine_type="$MACHINE_TYPE" --max_num_workers="$MAX_WORKERS")
optional args SERVICE_ACCOUNT --service_account_email
optional args NETWORK --network
optional args SUBNETWORK --subnetwork
optional args THREADS_PER_WORKER --number_of_worker_harness_threads
if [ -n "${SDK_CONTAINER_IMAGE:-}" ]; then
  args+=(--sdk_container_image="$SDK_CONTAINER_IMAGE")
else
  args+=(--setup_file="$SETUP_FILE")
fi
run_job "${args[@]}"
