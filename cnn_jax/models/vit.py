"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 and 32x32 images."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import errors
from cnn_jax.models import components

ModuleDef = Any


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

  heads: int
  mlp_dim: int
  norm: ModuleDef
  act: Callable
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dropout = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = self.norm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(y, y)
    x = x + dropout(y)
    y = self.norm()(x)
    y = dropout(self.act(nn.Dense(self.mlp_dim, dtype=self.dtype)(y)))
    return x + dropout(nn.Dense(x.shape[-1], dtype=self.dtype)(y))


class ViT(nn.Module):
  """Patches of `patch_size` x `patch_size` embedded by one dense layer, a class token
  (or a mean over the tokens: `pool="mean"`), learned position embeddings, `depth`
  encoder blocks of width `dim`, a final norm and dense logits.

  The image sides must be multiples of `patch_size`. The position embeddings depend
  on the number of patches, so the parameter count on the image size: with the
  defaults and 10 classes, 1,806,538 for 32x32x3 (64 patches) and 1,797,514 for
  28x28x1 (49 patches).
  """

  num_classes: int
  patch_size: int = 4
  dim: int = 192
  depth: int = 6
  heads: int = 3
  mlp_dim: int = 384
  dropout_rate: float = 0.0
  pool: str = "cls"
  norm: Any = "layer"
  act: Any = "gelu"
  dtype: Any = None  # Of activations and computations (config.dtype); None: inputs'.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise errors.ConfigError(
          f"ViT patch_size={p} does not divide the {h}x{w} images; use a divisor of "
          "both sides (e.g. 4 for 28x28 or 32x32).")
    if self.pool not in ("cls", "mean"):
      raise errors.ConfigError(f"ViT pool={self.pool!r}: use 'cls' or 'mean'.")
    norm = components.norm(self.norm, train, dtype=self.dtype)
    act = components.act(self.act)
    # Patches as a reshape and one matmul: the same as a p x p stride-p convolution,
    # without a strided convolution's slow gradient on CPU.
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = nn.Dense(self.dim, dtype=self.dtype, name="embedding")(
        x.reshape(n, -1, p * p * c))
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.dim))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, self.dim)), x],
                          axis=1)
    # Parameters used directly are cast, so a float32 one does not promote the tokens.
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02),
                       (1, x.shape[1], self.dim)).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for _ in range(self.depth):
      x = EncoderBlock(self.heads, self.mlp_dim, norm=norm, act=act,
                       dropout_rate=self.dropout_rate, dtype=self.dtype)(x, train)
    x = norm(name="encoder_norm")(x)
    x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)


ViTTiny = functools.partial(ViT, dim=192, depth=6, heads=3, mlp_dim=384)
