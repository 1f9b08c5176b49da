"""Devices and hosts: multi-host start-up, the 'data' mesh, batch sharding, per-host data slices.

Every training and sampling computation runs over one `jax.sharding.Mesh` of all devices with a
single 'data' axis: parameters are replicated, batches are split along their leading (example)
axis. On several hosts each process holds only its slice of a global batch, and
`jax.make_array_from_process_local_data` assembles the global array without copying data
between hosts.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

def cluster_env_detected() -> bool:
    """Whether the environment describes a multi-process job (SLURM, Open MPI, TPU pod)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return any(os.environ.get(k) for k in ("TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS",
                                           "MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
    """Start jax.distributed when asked (explicit address) or when a cluster env is detected.

    Returns whether jax.distributed was initialised. `auto=True` also initialises from the
    cluster environment (SLURM, Open MPI, Cloud TPU) when no address is given.
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id "
                             "(or leave all three out and let the cluster environment decide)")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return True
    if auto or cluster_env_detected():
        jax.distributed.initialize()
        return True
    return False


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices, axis name 'data'."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Shard the example axis on 'data'; `leading_axes` unsharded axes come first (e.g. steps)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), DATA_AXIS))


def check_batch_size(global_batch: int, field: str, mesh: Mesh | None = None) -> int:
    """The per-process batch size; a clear error when the global batch does not split evenly."""
    n_devices = mesh.devices.size if mesh is not None else jax.device_count()
    if global_batch <= 0 or global_batch % n_devices:
        raise ValueError(
            f"{field}={global_batch} must be a positive multiple of the number of devices "
            f"({n_devices}: {jax.process_count()} process(es) x {jax.local_device_count()} "
            f"local devices); e.g. use {max(n_devices, global_batch // n_devices * n_devices)}")
    return global_batch // jax.process_count()


def host_slice(global_batch: int) -> slice:
    """The examples of a global batch that this process reads (contiguous, in process order)."""
    local = global_batch // jax.process_count()
    start = jax.process_index() * local
    return slice(start, start + local)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, leading_axes: int = 0) -> dict:
    """Assemble global arrays from this process's slices, sharded on the example axis."""
    sharding = data_sharding(mesh, leading_axes)

    def put(x):
        x = np.asarray(x)
        global_shape = list(x.shape)
        global_shape[leading_axes] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return {k: put(v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (same values on every process) replicated on all devices of the mesh."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        tree)


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host sharded) array on every process."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def all_true(flag: bool) -> bool:
    """True on every process iff `flag` is true on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([bool(flag)]))
    return bool(np.all(flags))


def is_main_process() -> bool:
    return jax.process_index() == 0
