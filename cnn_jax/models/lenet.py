"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, 1998), in its usual modern reading."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models import components

# The network was designed for 32x32 inputs; LeCun et al. centred MNIST's 28x28
# digits in a 32x32 field, and so does this model with anything smaller.
INPUT_SIZE = 32


class LeNet5(nn.Module):
  """Conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 -> FC 120 -> FC 84 -> FC logits,
  with `act` after every layer but the last.

  Inputs smaller than 32x32 are zero-padded to 32x32 (centred), so 28x28 images see
  the published geometry: 32 -> 28 -> 14 -> 10 -> 5, and 5x5x16 = 400 features. For
  32x32x1 (or padded 28x28x1) inputs and 10 classes it has 61,706 parameters:
  156 + 2,416 + 48,120 + 10,164 + 850.

  The defaults are the classic ones, tanh and average pooling (the paper's
  subsampling layers, without their trainable coefficients); `act="relu",
  pool="max"` is the common modern variant.
  """

  num_classes: int
  act: Any = "tanh"
  pool: Any = "avg"
  dtype: Any = None  # Of activations and computations (config.dtype); None: inputs'.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or batch statistics in this model.
    conv, act, pool = (components.conv(self.dtype), components.act(self.act),
                       components.pool(self.pool))
    pad_h, pad_w = (max(0, INPUT_SIZE - size) for size in x.shape[1:3])
    if pad_h or pad_w:
      x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                      (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    x = pool(act(conv(6, (5, 5), padding="VALID")(x)))
    x = pool(act(conv(16, (5, 5), padding="VALID")(x)))
    x = x.reshape((x.shape[0], -1))
    x = act(nn.Dense(120, dtype=self.dtype)(x))
    x = act(nn.Dense(84, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
