"""Input: a TFDS dataset in, a `batching.Dataset` out (see `batching` for the interface).

How data flows: `source` finds the dataset prepared in ArrayRecord (preparing it, or
converting a TFRecord one, only then with TensorFlow); `cache` reads each of its splits
at random, through the TFDS data source or the decoded cache beside it; `splits` makes
the named splits (train, test, an optional validation hold-out) from split specs;
then one pipeline serves them as `batching.Chunk`s: `in_memory` (whole splits on the
devices, the fast path for data that fits) or `streaming` (Grain, chunk by chunk).
"""

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cnn_jax import mesh as mesh_lib
from cnn_jax.data import batching, cache, in_memory, preprocess, source, splits as splits_lib
from cnn_jax.data import streaming
from cnn_jax.data.batching import Chunk, Dataset
from cnn_jax.data.source import DatasetError, DatasetInfo

PIPELINES = {"in_memory": in_memory.DeviceResident, "streaming": streaming.Streamed}


def folder_options(config):
  """Options of a `folder:/path` dataset from the config; None for TFDS names."""
  if not config.dataset.startswith(source.FOLDER_PREFIX):
    return None
  from cnn_jax.data.builders.folder import FolderOptions  # pylint: disable=g-import-not-at-top
  return FolderOptions(image_size=tuple(config.image_size),
                       test_fraction=config.folder_test_fraction,
                       on_bad_image=config.on_bad_image)


def open_base_splits(builder, max_bytes: int):
  """split name -> its `cache.BaseSplit` (opened, and cached, on first use)."""
  bases = {}

  def open_base(name):
    if name not in bases:
      bases[name] = cache.open_base_split(builder, name, max_bytes)
    return bases[name]
  return open_base


def read_split(builder, spec: str = "train",
               max_bytes: int = 2 * 1024**3) -> tuple[np.ndarray, np.ndarray]:
  """All of split `spec` of a prepared dataset as numpy (uint8 images, int32 labels)."""
  split = splits_lib.from_spec(spec, list(builder.info.splits.keys()),
                               open_base_splits(builder, max_bytes))
  return split.read(np.arange(len(split)))


def open_splits(config) -> tuple[DatasetInfo, dict[str, splits_lib.Split]]:
  """The dataset's info and named splits, preparing and caching what is missing.

  Process 0 does it first while the others wait, so only one prepares or writes.
  """
  def open_all():
    if not config.dataset.startswith(source.FOLDER_PREFIX):
      cached = cache.open_cached(config.dataset, config.data_dir,
                                 config.in_memory_max_bytes)
      if cached is not None:  # Decoded already: no TFDS to import.
        info, bases = cached
        named = splits_lib.named_splits(config, list(bases), bases.__getitem__)
        return dataclasses.replace(info, splits={k: len(v) for k, v in named.items()}), named
    builder = source.prepared_builder(config.dataset, config.data_dir,
                                      folder_options(config))
    named = splits_lib.named_splits(config, list(builder.info.splits.keys()),
                                    open_base_splits(builder, config.in_memory_max_bytes))
    return source.dataset_info(builder, {k: len(v) for k, v in named.items()}), named

  if jax.process_count() == 1:
    return open_all()
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = open_all()
    except Exception as e:  # pylint: disable=broad-except
      error = e  # Told to the others first, so none waits for a process that left.
  if not mesh_lib.all_processes(error is None):
    if error is not None:
      raise error
    raise DatasetError("Process 0 could not prepare or open the dataset; its message "
                       "says why.")
  return result if jax.process_index() == 0 else open_all()


def choose_pipeline(config, info: DatasetInfo) -> str:
  """'in_memory' or 'streaming' for `config.input_pipeline` ('auto' decides by size).

  'auto' keeps the splits on the devices when the decoded training split is at most
  `config.in_memory_max_bytes`, and streams them otherwise.
  """
  choice = config.input_pipeline
  if choice not in (*PIPELINES, "auto"):
    raise DatasetError(f"config.input_pipeline={choice!r} is not one of "
                       f"{', '.join(PIPELINES)}, auto; e.g. --config.input_pipeline=auto.")
  if choice != "auto":
    return choice
  size = info.splits["train"] * int(np.prod(info.image_shape))
  return "in_memory" if size <= config.in_memory_max_bytes else "streaming"


def channel_stats(split: splits_lib.Split, chunk: int = 4096):
  """Per-channel (mean, std) of `split` on the [0, 1] scale, equal in every process.

  Each process sums its share exactly (integers), and the sums are added up.
  """
  start, end = batching.share_bounds(len(split), jax.process_count())[jax.process_index()]
  sums = 0
  for s in range(start, end, chunk):
    images, _ = split.read(np.arange(s, min(end, s + chunk)))
    sums = sums + np.stack(preprocess.channel_sums(images))
  if jax.process_count() > 1:
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
  return preprocess.stats_from_sums(*sums)


def load(config, mesh: Mesh, data_key: jax.Array, *, steps_per_dispatch: int) -> Dataset:
  """Opens `config.dataset` for the mesh's devices (see the module docstring).

  Args:
    config: the data section of the experiment config (`schema.section(config,
      "data")`: dataset, data_dir, splits, batch sizes, input pipeline, normalize,
      data_workers, ...).
    mesh: the devices batches go to.
    data_key: the run's data key: training orders derive from it.
    steps_per_dispatch: the training steps a dispatch runs (streaming reads that many
      batches at once).

  Raises:
    DatasetError: the dataset cannot be prepared or read, or a split is empty or
      smaller than one batch.
  """
  info, named = open_splits(config)
  if info.splits["train"] < config.batch_size:
    raise DatasetError(
        f"The train split ({config.train_split!r}) has {info.splits['train']} examples, "
        f"fewer than one batch (batch_size={config.batch_size}); lower "
        "--config.batch_size or use a larger split.")
  stats = channel_stats(named["train"]) if config.normalize else None
  common = dict(info=info, mesh=mesh, data_key=data_key, batch_size=config.batch_size,
                eval_batch_size=config.eval_batch_size, channel_stats=stats)
  pipeline = choose_pipeline(config, info)
  if pipeline == "streaming":
    common.update(workers=config.data_workers, group=max(1, steps_per_dispatch))
  return PIPELINES[pipeline].open(named, **common)


__all__ = ["Chunk", "Dataset", "DatasetError", "DatasetInfo", "choose_pipeline", "load",
           "open_splits", "read_split"]
