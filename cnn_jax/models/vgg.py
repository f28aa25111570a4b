"""A small VGG-style network with BatchNorm and Dropout, sized for 28x28 images."""

from typing import Sequence

import flax.linen as nn
import jax

from cnn_jax.models import components


class VGGBN(components.Network):
  """Blocks of [Conv 3x3 SAME -> BatchNorm -> ReLU] x `convs_per_block`, each block
  followed by max-pool 2x2/2 and Dropout; then Dense(`hidden`) -> BatchNorm -> ReLU ->
  Dropout -> Dense(logits).

  Convolutions and the hidden Dense have no bias: the BatchNorm after them has one.
  For 28x28x1 inputs, 10 classes and the defaults it has 871,082 parameters (plus 896
  BatchNorm statistics) and costs about 19.1M multiply-adds per image forward.

  `norm` and `act` are the parts it is built from (models/components.py), by name or
  as objects: `norm` "batch", "group", "layer" or "none"; `act` "relu", "gelu", ...
  """

  widths: Sequence[int] = (32, 64)
  convs_per_block: int | Sequence[int] = 2  # One count for every block, or one each.
  hidden: int = 256
  dropout_rate: float = 0.2
  head_dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv, norm, act = self.parts(train)
    convs = self.convs_per_block
    convs = (convs,) * len(self.widths) if isinstance(convs, int) else tuple(convs)
    if len(convs) != len(self.widths):
      raise ValueError(f"convs_per_block={self.convs_per_block!r} gives "
                       f"{len(convs)} counts for {len(self.widths)} blocks (widths="
                       f"{tuple(self.widths)}): give one count, or one per block.")
    for width, count in zip(self.widths, convs):
      for _ in range(count):
        x = conv(width, (3, 3), padding="SAME", use_bias=False)(x)
        x = act(norm()(x))
      x = components.max_pool_2x2(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)(x)
    x = act(norm()(x))
    x = nn.Dropout(self.head_dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
