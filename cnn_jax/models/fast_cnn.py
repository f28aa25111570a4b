"""A small CNN built for time to accuracy on 28x28 images (the speedrun's network)."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models import components


class FastCNN(components.Network):
  """The tutorial's first layer on the image padded by one pixel (Conv `widths[0]` 3x3
  with bias -> ReLU -> max-pool 2x2/2, a "same" convolution), then one block per
  further width: Conv 3x3 SAME -> max-pool 2x2/2 -> BatchNorm -> ReLU (pooling before
  the normalisation, as airbench does: the norm and activation run on a quarter of the
  pixels); then Dense(`hidden`) -> BatchNorm -> ReLU -> Dense(logits).

  Plain Flax. On the CPU backend its first layer is one fused kernel (cnn_jax/cpu/
  fusion.py: the 28x28x32 activation is never written) and its other convolutions run
  on oneDNN. Convolutions after the first and the hidden Dense have no bias: the
  BatchNorm after them has one. For 28x28x1 inputs, 10 classes and the defaults it has
  824,778 parameters (plus 640 BatchNorm statistics).
  """

  widths: Sequence[int] = (32, 64)
  hidden: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv, norm, act = self.parts(train)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = components.max_pool_2x2(act(conv(self.widths[0], (3, 3), padding="VALID")(x)))
    for width in self.widths[1:]:
      x = conv(width, (3, 3), padding="SAME", use_bias=False)(x)
      x = act(norm()(components.max_pool_2x2(x)))
    x = x.reshape((x.shape[0], -1))
    x = act(norm()(nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)(x)))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
