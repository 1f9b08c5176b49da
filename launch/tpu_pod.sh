#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every TPU VM worker.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh CONFIG WORKDIR [more flags...]
#
# Every worker needs this repository at the same path (REPO, default ~/score_sde). WORKDIR is
# a bucket, gs://BUCKET/RUN (checkpoints through orbax/tensorstore, every other file through
# etils.epath + gcsfs; the TPU VMs' service account needs write access to it), or a path all
# workers share (NFS, Filestore). A gcsfuse mount is not needed and not advised: orbax's atomic
# rename is not atomic there.
# The XLA compilation cache stays on each worker's local disk (COMPILATION_CACHE, default
# ~/.cache/score_sde_xla): every worker compiles the same programs, and a local cache is read
# without network round trips. JAX also accepts a gs:// cache directory (read through
# etils.epath) if COMPILATION_CACHE is set to one.
# jax.distributed.initialize() finds the pod's coordinator by itself (--distributed).
# Datasets: tfds array_record data in config.data.data_dir (or TFDS_DATA_DIR), also shared.
set -euo pipefail
CONFIG=${1:?usage: tpu_pod.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: tpu_pod.sh CONFIG WORKDIR [flags...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-'~/score_sde'}
CACHE=${COMPILATION_CACHE:-'~/.cache/score_sde_xla'}
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO
  pip install -q -e '.[tfds,gcs]' 'jax[tpu]'
  python -m score_sde.main --distributed --compilation_cache $CACHE \
    --config $CONFIG --workdir $WORKDIR $EXTRA
"
