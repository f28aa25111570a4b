"""The device mesh: data parallel over every device of every process."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes).

  Built with `Mesh`, whose axes are `Auto`: with `jax.make_mesh`'s default `Explicit`
  axes, flax's Dropout fails to trace.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
        f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
        f"use a multiple of {n}, e.g. --config.{what}={max(n, batch_size // n * n)}.")


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array copied onto every device of the mesh (works across processes)."""
  sharding = replicated(mesh)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds in every process of the job: a collective when there are
  several, so every process must call it at the same point."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).all())
