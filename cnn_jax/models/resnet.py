"""Residual networks (He, Zhang, Ren & Sun, 2016) in their two published forms.

ImageNet form (`ResNet`: ResNet18, ResNet50): a 7x7/2 stem and max-pool, four stages
of basic or bottleneck blocks with projection shortcuts, as torchvision builds them
(stride on the 3x3 convolution of a bottleneck, "v1.5"). CIFAR form (`CifarResNet`:
ResNet20, ResNet32, ResNet56): a 3x3 stem and three stages of 16, 32, 64 channels of
basic blocks, 6n + 2 layers, with identity shortcuts that zero-pad the new channels
(the paper's option A) or projections (option B).

Blocks take `conv`, `norm` and `act` as attributes (models/components.py), as in
flax's ImageNet example; the networks take their names from the config.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import errors
from cnn_jax.models import components



def _pad(kernel: int):
  """Symmetric padding of a stride-1-or-2 convolution, as in torchvision."""
  return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(components.Block):
  """Two 3x3 convolutions, each normalised; the second's activation comes after the
  sum with the shortcut.

  `shortcut` is how the input is matched to the output when their shapes differ:
  "projection" (a strided 1x1 convolution and a norm) or "pad" (subsampled with the
  stride, new channels zero: no parameters).
  """

  shortcut: str = "projection"
  # The last norm's scale starts at zero, so the block starts as an identity.
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(3),
                  use_bias=False)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3), use_bias=False)(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init))(y)
    return self.act(_shortcut(self, x, y.shape) + y)


class BottleneckBlock(components.Block):
  """1x1 down to `filters`, 3x3 (strided), 1x1 up to 4 * `filters`, each normalised;
  projection shortcut where the shapes differ."""

  shortcut: str = "projection"
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm()(self.conv(self.filters, (1, 1), use_bias=False)(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=_pad(3),
                  use_bias=False)(y)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1), use_bias=False)(y)
    y = self.norm(scale_init=_last_scale_init(self.zero_init))(y)
    return self.act(_shortcut(self, x, y.shape) + y)


def _last_scale_init(zero: bool):
  return nn.initializers.zeros_init() if zero else nn.initializers.ones_init()


def _shortcut(block: nn.Module, x: jax.Array, shape) -> jax.Array:
  """The block's input, matched to the residual branch's `shape`."""
  if x.shape == shape:
    return x
  s = block.strides
  if block.shortcut == "pad":  # Option A: subsample, then zero channels.
    x = x[:, ::s, ::s, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, shape[-1] - x.shape[-1])))
  x = block.conv(shape[-1], (1, 1), (s, s), use_bias=False, name="conv_proj")(x)
  return block.norm(name="norm_proj")(x)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(components.Network):
  """The ImageNet form: stem, stages of `stage_sizes` blocks (`block` "basic" or
  "bottleneck") of `width` * 2^stage filters, global average pool, dense logits.

  For 224x224x3 inputs and 1000 classes: ResNet18 11,689,512 and ResNet50 25,557,032
  parameters, as torchvision's (plus BatchNorm statistics). Inputs of 32x32 or more.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  width: int = 64
  zero_init_residual: bool = True  # As flax's ImageNet example (Goyal et al., 2017).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv, norm, act = self.parts(train)
    block = components.lookup(BLOCKS, self.block, "block", "residual block")
    x = conv(self.width, (7, 7), (2, 2), padding=_pad(7), use_bias=False,
             name="conv_init")(x)
    x = act(norm(name="norm_init")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        x = block(self.width * 2**i, conv=conv, norm=norm, act=act,
                  strides=2 if i > 0 and j == 0 else 1,
                  zero_init=self.zero_init_residual)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class CifarResNet(components.Network):
  """The CIFAR form: 3x3 stem of `width` filters, three stages of (depth - 2) / 6
  basic blocks of `width`, 2 * `width`, 4 * `width` filters (stride 2 entering the
  second and third), global average pool, dense logits.

  `shortcut` "pad" is the paper's option A (no parameters), "projection" its option B.
  Exact parameter counts for 10 classes and 3 input channels, BatchNorm scale and
  bias included, statistics not: ResNet20 269,722 (option B: 272,474), ResNet32
  464,154 and ResNet56 853,018; the paper rounds them to 0.27M, 0.46M and 0.85M.
  """

  depth: int = 20
  width: int = 16
  shortcut: str = "pad"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    components.check_depth("CifarResNet", self.depth, 2, "20, 32, 44, 56, 110")
    if self.shortcut not in ("pad", "projection"):
      raise errors.ConfigError(
          f"CifarResNet shortcut={self.shortcut!r}: use 'pad' (option A) or "
          "'projection' (option B).")
    conv, norm, act = self.parts(train)
    x = conv(self.width, (3, 3), padding=_pad(3), use_bias=False, name="conv_init")(x)
    x = act(norm(name="norm_init")(x))
    for i in range(3):
      for j in range((self.depth - 2) // 6):
        x = BasicBlock(self.width * 2**i, conv=conv, norm=norm, act=act,
                       strides=2 if i > 0 and j == 0 else 1, shortcut=self.shortcut)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
ResNet20 = functools.partial(CifarResNet, depth=20)
ResNet32 = functools.partial(CifarResNet, depth=32)
ResNet56 = functools.partial(CifarResNet, depth=56)
