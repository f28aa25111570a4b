"""Input: TFDS datasets in, device-resident splits out."""

import dataclasses

from jax.sharding import Mesh

from cnn_jax.data import in_memory, source
from cnn_jax.data.source import DatasetError, DatasetInfo


@dataclasses.dataclass(frozen=True)
class Data:
  info: DatasetInfo
  train: in_memory.DeviceSplit
  test: in_memory.DeviceSplit


def folder_options(config):
  """Options of a `folder:/path` dataset from the config; None for TFDS names."""
  if not config.dataset.startswith(source.FOLDER_PREFIX):
    return None
  from cnn_jax.data.builders.folder import FolderOptions  # pylint: disable=g-import-not-at-top
  return FolderOptions(image_size=tuple(config.image_size),
                       test_fraction=config.folder_test_fraction,
                       on_bad_image=config.on_bad_image)


def load(config, mesh: Mesh) -> Data:
  """Prepares (if needed) and loads `config.dataset` onto the mesh's devices."""
  builder = source.get_builder(config.dataset, config.data_dir,
                               folder_options=folder_options(config))
  info = source.dataset_info(builder)
  splits = {}
  for split in (config.train_split, config.test_split):
    images, labels = source.read_split(builder, split)
    splits[split] = in_memory.put_split(images, labels, mesh)
  train, test = splits[config.train_split], splits[config.test_split]
  info = dataclasses.replace(info, num_train=train.num_examples, num_test=test.num_examples)
  return Data(info=info, train=train, test=test)


__all__ = ["Data", "DatasetError", "DatasetInfo", "load"]
