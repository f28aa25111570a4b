"""The Keras tutorial on the embedded dataset: 5,000 real MNIST digits (4,000 train).

Conv(32, 3x3) -> MaxPool 2x2 -> Dense(64) -> Dense(10), Adam 1e-3, batch 32, 5 epochs.

  ./run.sh train --config experiments/seed_cnn.py --workdir runs/seed_cnn
"""

import ml_collections

from cnn_jax import schema


def get_config() -> ml_collections.ConfigDict:
  """Every field at its default (cnn_jax/schema.py:FIELDS, which says what each
  field does): the tutorial."""
  return schema.default_config()
