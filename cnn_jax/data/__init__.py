"""Input: TFDS datasets in, device-resident splits out."""

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cnn_jax.data import in_memory, preprocess, source
from cnn_jax.data.source import DatasetError, DatasetInfo


@dataclasses.dataclass(frozen=True)
class Data:
  info: DatasetInfo
  train: in_memory.DeviceSplit
  test: in_memory.DeviceSplit
  # (mean, std) per channel of the train split when config.normalize, else None.
  channel_stats: tuple[np.ndarray, np.ndarray] | None = None


def folder_options(config):
  """Options of a `folder:/path` dataset from the config; None for TFDS names."""
  if not config.dataset.startswith(source.FOLDER_PREFIX):
    return None
  from cnn_jax.data.builders.folder import FolderOptions  # pylint: disable=g-import-not-at-top
  return FolderOptions(image_size=tuple(config.image_size),
                       test_fraction=config.folder_test_fraction,
                       on_bad_image=config.on_bad_image)


def prepared_builder(config):
  """The dataset's TFDS builder; process 0 prepares it while the others wait."""
  options = folder_options(config)
  if jax.process_count() == 1:
    return source.get_builder(config.dataset, config.data_dir, folder_options=options)
  builder = None
  if jax.process_index() == 0:
    builder = source.get_builder(config.dataset, config.data_dir, folder_options=options)
  multihost_utils.sync_global_devices("dataset prepared")
  return builder or source.get_builder(config.dataset, config.data_dir,
                                       folder_options=options)


def load_split(builder, split: str, mesh: Mesh) -> tuple[in_memory.DeviceSplit, np.ndarray]:
  """This process's share of `split` onto the mesh; also returns the share (host)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    images, labels = source.read_split(builder, split)
    return in_memory.put_split(images, labels, mesh), images
  shares = tfds.even_splits(split, jax.process_count())
  sizes = [builder.info.splits[s].num_examples for s in shares]
  images, labels = source.read_split(builder, shares[jax.process_index()])
  return in_memory.put_split(images, labels, mesh, sizes), images


def global_channel_stats(local_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std over the shares of all processes."""
  sums = np.stack(preprocess.channel_sums(local_images))  # [3, C] int64
  if jax.process_count() > 1:
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
  return preprocess.stats_from_sums(*sums)


def load(config, mesh: Mesh):
  """Prepares (if needed) and opens `config.dataset` for the mesh's devices.

  Each process reads only its share of each split. A training split that fits
  (`config.input_pipeline`, see `streaming.choose_pipeline`) is loaded onto the devices
  (`Data`); a larger one is streamed (`streaming.StreamingData`).
  """
  from cnn_jax.data import streaming  # pylint: disable=g-import-not-at-top
  builder = prepared_builder(config)
  if streaming.choose_pipeline(config, builder) == "streaming":
    return streaming.load(config, mesh, builder)
  info = source.dataset_info(builder)
  train, train_images = load_split(builder, config.train_split, mesh)
  test, _ = load_split(builder, config.test_split, mesh)
  stats = global_channel_stats(train_images) if config.normalize else None
  info = dataclasses.replace(info, num_train=train.num_examples, num_test=test.num_examples)
  return Data(info=info, train=train, test=test, channel_stats=stats)


__all__ = ["Data", "DatasetError", "DatasetInfo", "load"]
