"""Building blocks shared by the model files."""

import flax.linen as nn
import jax


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding (odd trailing rows are dropped)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
