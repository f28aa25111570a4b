"""The interchangeable parts the zoo's networks are built from: normalisation,
activation and pooling, one registry dict per kind.

Blocks take the parts they use as attributes, as flax's ImageNet example passes
`norm` and `act`, so GroupNorm instead of BatchNorm, another activation or no
normalisation at all is a config value, not a code edit:

  config.model_kwargs = dict(norm="group", act="gelu")

Each attribute is either a name from the dict of its kind (what a config holds) or
the object itself, of the form that dict's values have (what Python code may pass).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import errors

ModuleDef = Any

class GroupNorm(nn.Module):
  """GroupNorm (Wu & He, 2018) with `groups` groups or, where the channels do not
  divide into that many groups of two or more, the most groups that do (16 channels:
  8 groups), so one setting serves every width of a network. (A group of one feature
  of a dense layer would normalise every value to zero.)"""

  groups: int = 32
  scale_init: Callable = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    groups = next(g for g in range(min(self.groups, max(1, channels // 2)), 0, -1)
                  if channels % g == 0)
    norm = nn.GroupNorm(num_groups=groups, scale_init=self.scale_init, dtype=self.dtype)
    nn.share_scope(self, norm)  # Its parameters sit directly under this module.
    return norm(x)


def _identity_norm(**unused_kwargs):
  return lambda x: x


# Functions of (train, momentum) returning a module constructor called as
# norm(name=..., scale_init=..., dtype=...). Only BatchNorm keeps statistics (in
# `batch_stats`, updated while training with `momentum`); the others normalise each
# example alone.
NORMS: dict[str, Callable[[bool, float], ModuleDef]] = {
    "batch": lambda train, momentum: functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=momentum, epsilon=1e-5),
    "group": lambda train, momentum: GroupNorm,
    "layer": lambda train, momentum: nn.LayerNorm,
    "none": lambda train, momentum: _identity_norm,
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}


def max_pool_2x2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


# 2x2/2 VALID pooling functions of [N, H, W, C] activations.
POOLS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "max": max_pool_2x2,
    "avg": avg_pool_2x2,
}


def lookup(registry: dict, value: Any, field: str, what: str) -> Any:
  """`registry[value]` for a name, `value` itself otherwise; an unknown name is a
  ConfigError naming the model_kwargs `field` and the known names."""
  if not isinstance(value, str):
    return value
  if value not in registry:
    raise errors.ConfigError(
        f"model_kwargs {field}={value!r} is not a known {what}; choose one of "
        f"{', '.join(sorted(registry))} (cnn_jax/models/components.py).")
  return registry[value]


def norm(value: str | Callable, train: bool, momentum: float = 0.9,
         dtype: Any = None) -> ModuleDef:
  """The normalisation module constructor for `value` (a NORMS name or a function
  of the same form) in training (`train`) or evaluation mode, whose outputs are of
  `dtype` (None: its input's); flax computes its statistics in float32 either way."""
  constructor = lookup(NORMS, value, "norm", "normalisation")(train, momentum)
  return functools.partial(constructor, dtype=dtype)


def act(value: str | Callable) -> Callable[[jax.Array], jax.Array]:
  """The activation function named `value` in ACTIVATIONS (or `value` itself)."""
  return lookup(ACTIVATIONS, value, "act", "activation")


def conv(dtype: Any = None) -> ModuleDef:
  """`nn.Conv` computing in `dtype` (None: that of its inputs and parameters); its
  parameters stay float32."""
  return functools.partial(nn.Conv, dtype=dtype)


class Network(nn.Module):
  """What the zoo's convolutional networks share: logits for `num_classes`, built from
  the parts `norm` and `act` (by name or as objects), computing in `dtype`, with
  BatchNorm's `bn_momentum`. A network subclasses it, adds its own fields (each with
  a default) and resolves its parts with `self.parts(train)`."""

  num_classes: int
  bn_momentum: float = 0.9
  norm: Any = "batch"
  act: Any = "relu"
  dtype: Any = None  # Of activations and computations (config.dtype); None: inputs'.

  def parts(self, train: bool) -> tuple[ModuleDef, ModuleDef, Callable]:
    """(conv, norm, act) resolved for training (`train`) or evaluation."""
    return (conv(self.dtype), norm(self.norm, train, self.bn_momentum, self.dtype),
            act(self.act))


def check_depth(network: str, depth: int, base: int, examples: str) -> None:
  """Refuses a `depth` not of the form 6n + `base` with n >= 1 (`examples`)."""
  if depth < 6 + base or (depth - base) % 6:
    raise errors.ConfigError(f"{network} depth={depth} is not of the form 6n + {base} "
                             f"with n >= 1 ({examples}, ...).")


class Block(nn.Module):
  """What the zoo's blocks share: `filters` output channels, the network's resolved
  `conv`, `norm` and `act`, and the stride of the block's first strided layer."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1


def pool(value: str | Callable) -> Callable[[jax.Array], jax.Array]:
  """The 2x2/2 pooling function named `value` in POOLS (or `value` itself)."""
  return lookup(POOLS, value, "pool", "pooling")
