"""Pure preprocessing of device batches (uint8 images in, float32 out)."""

import jax
import jax.numpy as jnp


def scale_to_unit(images: jax.Array) -> jax.Array:
  """The tutorial's preprocessing: uint8 pixels / 255 as float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0
