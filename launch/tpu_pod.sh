#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every TPU VM worker.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh CONFIG WORKDIR [more flags...]
#
# Every worker needs this repository at the same path (REPO, default ~/score_sde) and WORKDIR
# on storage that all workers see as a local path (NFS, Filestore or a gcsfuse-mounted bucket).
# jax.distributed.initialize() finds the pod's coordinator by itself (--distributed).
# Datasets: tfds array_record data in config.data.data_dir (or TFDS_DATA_DIR), also shared.
set -euo pipefail
CONFIG=${1:?usage: tpu_pod.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: tpu_pod.sh CONFIG WORKDIR [flags...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-'~/score_sde'}
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO
  pip install -q -e '.[tfds]' 'jax[tpu]'
  python -m score_sde.main --distributed --compilation_cache $WORKDIR/compilation_cache \
    --config $CONFIG --workdir $WORKDIR $EXTRA
"
