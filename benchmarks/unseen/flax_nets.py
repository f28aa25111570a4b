"""Five networks in plain `flax.linen`, as a paper's code or a colleague's module would
have them: `nn.Conv` (grouped, dilated, strided), `nn.GroupNorm`, `nn.LayerNorm`,
`nn.BatchNorm`, `nn.max_pool`, `nn.avg_pool`. They import nothing of cnn_jax; the
bench trains them with `--config.model=benchmarks.unseen.flax_nets:Name`, and
keras_nets.py holds their twins (same layers, same parameter counts).
"""

import flax.linen as nn
import jax.numpy as jnp


class SmallNet(nn.Module):
  """The README's "Adding a model" example."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class SeparableBlock(nn.Module):
  """Depthwise 3x3 (strided), GroupNorm, ReLU, pointwise 1x1, GroupNorm, ReLU."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = nn.Conv(c, (3, 3), (self.strides, self.strides), feature_group_count=c,
                use_bias=False)(x)
    x = nn.relu(nn.GroupNorm(num_groups=8)(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
    return nn.relu(nn.GroupNorm(num_groups=8)(x))


class MobileNetGN(nn.Module):
  """A MobileNet-style depthwise-separable network with GroupNorm."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(32, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.GroupNorm(num_groups=8)(x))
    for features, strides in ((64, 1), (64, 2), (128, 1), (128, 2), (128, 1)):
      x = SeparableBlock(features, strides)(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class ResBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    s = (self.strides, self.strides)
    y = nn.relu(norm()(nn.Conv(self.features, (3, 3), s, use_bias=False)(x)))
    y = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
    if x.shape != y.shape:
      x = norm()(nn.Conv(self.features, (1, 1), s, use_bias=False)(x))
    return nn.relu(x + y)


class StemResNet(nn.Module):
  """A ResNet with a strided 5x5 stem and a 3x3/2 `nn.max_pool`, then two stages of
  basic blocks (the second strided, with a projection shortcut)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(32, (5, 5), (2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    x = ResBlock(32)(x, train)
    x = ResBlock(64, 2)(x, train)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class DilatedNet(nn.Module):
  """3x3 convolutions with dilation 1, 2, 4 (a context module), BatchNorm, ReLU, then
  average pooling."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    for features, dilation in ((32, 1), (32, 2), (64, 4), (64, 1)):
      x = nn.Conv(features, (3, 3), kernel_dilation=dilation, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class ConvNeXtBlock(nn.Module):
  """7x7 depthwise, LayerNorm, 4x MLP with GELU, layer scale, residual."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    y = nn.Conv(c, (7, 7), feature_group_count=c)(x)
    y = nn.LayerNorm(epsilon=1e-6)(y)
    y = nn.Dense(4 * c)(y)
    y = nn.Dense(c)(nn.gelu(y, approximate=False))
    gamma = self.param("gamma", nn.initializers.constant(1e-6), (c,))
    return x + gamma * y


class ConvNeXtTiny(nn.Module):
  """A ConvNeXt-style network: a 2x2/2 patchify stem, two stages of ConvNeXt blocks
  with a LayerNorm and 2x2/2 downsampling between them."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(48, (2, 2), (2, 2), padding="VALID")(x)
    x = nn.LayerNorm(epsilon=1e-6)(x)
    x = ConvNeXtBlock()(ConvNeXtBlock()(x))
    x = nn.LayerNorm(epsilon=1e-6)(x)
    x = nn.Conv(96, (2, 2), (2, 2), padding="VALID")(x)
    x = ConvNeXtBlock()(ConvNeXtBlock()(x))
    x = nn.LayerNorm(epsilon=1e-6)(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes)(x)
