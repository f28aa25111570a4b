"""Wide residual networks (Zagoruyko & Komodakis, 2016): pre-activation, CIFAR-sized."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models import components



class WideBlock(components.Block):
  """norm -> act -> 3x3 conv (strided) -> norm -> act -> dropout -> 3x3 conv, plus the
  input; where the shapes differ, the shortcut is a strided 1x1 convolution of the
  activated input, as in the authors' code."""

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    s = (self.strides, self.strides)
    y = self.act(self.norm()(x))
    shortcut = x
    if x.shape[-1] != self.filters or self.strides != 1:
      shortcut = self.conv(self.filters, (1, 1), s, use_bias=False, name="conv_proj")(y)
    y = self.conv(self.filters, (3, 3), s, padding=((1, 1), (1, 1)), use_bias=False)(y)
    y = self.act(self.norm()(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(y)
    return shortcut + y


class WideResNet(components.Network):
  """WRN-`depth`-`widen_factor`: a 3x3 stem of 16 filters, three groups of
  (depth - 4) / 6 wide blocks of 16k, 32k, 64k filters (stride 2 entering the second
  and third), a final norm and activation, global average pool, dense logits.

  For 10 classes and 3 input channels, BatchNorm scale and bias included, statistics
  not: WRN-16-4 2,748,890 and WRN-28-10 36,479,194 parameters (the paper's 2.7M and
  36.5M).
  """

  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    components.check_depth("WideResNet", self.depth, 4, "10, 16, 22, 28, 40")
    conv, norm, act = self.parts(train)
    x = conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv_init")(x)
    for i in range(3):
      for j in range((self.depth - 4) // 6):
        x = WideBlock(16 * self.widen_factor * 2**i, conv=conv, norm=norm, act=act,
                      strides=2 if i > 0 and j == 0 else 1,
                      dropout_rate=self.dropout_rate)(x, train)
    x = act(norm(name="norm_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


WRN16_4 = functools.partial(WideResNet, depth=16, widen_factor=4)
WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)
