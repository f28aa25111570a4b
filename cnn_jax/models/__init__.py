"""The model registry: one dict from config name to Flax module class."""

import flax.linen as nn

from cnn_jax.errors import ConfigError
from cnn_jax.models.seed_cnn import SeedCNN
from cnn_jax.models.vgg import VGGBN

MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN,
    "vgg_bn": VGGBN,
}


def model_class(name: str) -> type[nn.Module]:
  """The registered model class `name`."""
  if name not in MODELS:
    raise ConfigError(
        f"Unknown model {name!r}. Known models: {', '.join(sorted(MODELS))}. "
        "Add one by registering its class in cnn_jax/models/__init__.py:MODELS.")
  return MODELS[name]


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Returns the registered model `name` with `num_classes` output logits."""
  return model_class(name)(num_classes=num_classes, **kwargs)
