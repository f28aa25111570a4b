"""The Keras tutorial network: Conv(32, 3x3) -> MaxPool 2x2 -> Dense(64) -> Dense(classes)."""

from typing import Any

import flax.linen as nn
import jax



class SeedCNN(nn.Module):
  """Conv 32 3x3 VALID + ReLU, max-pool 2x2/2, flatten, Dense 64 + ReLU, Dense logits.

  For 28x28x1 inputs and 10 classes it has 347,146 parameters, as in Keras.
  """

  num_classes: int
  features: int = 32
  hidden: int = 64
  dtype: Any = None  # Of activations and computations (config.dtype); None: inputs'.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or batch statistics in this model.
    x = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID", dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
