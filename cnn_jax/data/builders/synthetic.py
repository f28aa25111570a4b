"""TFDS builder for a synthetic MNIST-sized dataset: random 28x28x1 images, 10 classes.

For speed benchmarks where no real dataset is prepared: 60,000 train / 10,000 test
examples with uniform random pixels and labels, the same on every machine (fixed
seeds). Nothing is learnable in it; test accuracy stays near chance (0.1).
"""

import numpy as np
import tensorflow_datasets as tfds

from cnn_jax.data.builders import mnist_5k

NUM_TRAIN = 60_000
NUM_TEST = 10_000
_SEEDS = {"train": 0, "test": 1}


def random_split(split: str, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic uint8 images [N, 28, 28, 1] and int64 labels [N] of `split`."""
  rng = np.random.default_rng(_SEEDS[split])
  images = rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8)
  return images, rng.integers(0, 10, num_examples)


_MODULE_DOC = __doc__  # The description TFDS keeps.


class SyntheticMnist(mnist_5k.DigitsBuilder):
  """Random MNIST-shaped images: 60,000 train / 10,000 test, 10 classes."""

  name = "synthetic_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Uniform random pixels and labels, seeds 0 (train), 1 (test)."}
  DESCRIPTION = _MODULE_DOC

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    return {"train": self._generate_examples("train", NUM_TRAIN),
            "test": self._generate_examples("test", NUM_TEST)}

  def _generate_examples(self, split, num_examples):
    return mnist_5k.numbered_examples(*random_split(split, num_examples))
