"""TFDS builders that prepare datasets from files available offline.

`OFFLINE_BUILDERS` maps a dataset name to a builder class that prepares it with no
network access. Importing this module registers them with TFDS.
"""

import tensorflow_datasets as tfds

from cnn_jax.data.builders.mnist_5k import Mnist5k
from cnn_jax.data.builders.synthetic import SyntheticMnist

OFFLINE_BUILDERS: dict[str, type[tfds.core.DatasetBuilder]] = {
    "mnist_5k": Mnist5k,
    "synthetic_mnist": SyntheticMnist,
}
