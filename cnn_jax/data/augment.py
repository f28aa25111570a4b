"""Training-time augmentation: pure functions of (key, batch) that run on device.

`train.train_steps` applies them to the raw uint8 batch, before `preprocess`, so the
zero padding of a crop is a black pixel whatever the normalisation (the usual
pad -> crop -> flip -> normalise pipeline). Every function keeps shape and dtype, so
float batches work as well. Evaluation never augments.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from cnn_jax.errors import ConfigError

Augment = Callable[[jax.Array, jax.Array], jax.Array]

# Independent streams under an augmentation key: turning flips on or off leaves the
# crop offsets of a run unchanged.
_CROP_STREAM, _FLIP_STREAM = 0, 1


def crop_offsets(key: jax.Array, num_images: int, padding: int) -> jax.Array:
  """Per-image (row, column) offsets into the padded image, int32 [N, 2] in [0, 2P]."""
  return jax.random.randint(key, (num_images, 2), 0, 2 * padding + 1, dtype=jnp.int32)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Pads `padding` zero pixels on each side of [N, H, W, C] images and crops each
  back to H x W at its own random offset (`crop_offsets`)."""
  if padding == 0:
    return images
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = crop_offsets(key, images.shape[0], padding)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


# Test-time augmentation: name -> the views of a [N, H, W, C] batch whose logits an
# evaluation averages (config.evals.<name>.tta). "flip" is the mirror image of a
# network trained with --config.flip (airbench's flip TTA).
TTA_VIEWS: dict[str, Callable[[jax.Array], list[jax.Array]]] = {
    "none": lambda images: [images],
    "flip": lambda images: [images, images[:, :, ::-1, :]],
}


def flip_mask(key: jax.Array, num_images: int) -> jax.Array:
  """Which images to flip: bool [N], each True with probability 0.5."""
  return jax.random.bernoulli(key, 0.5, (num_images,))


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors left-right the [N, H, W, C] images selected by `flip_mask`."""
  mask = flip_mask(key, images.shape[0])
  return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def augment(key: jax.Array, images: jax.Array, *, crop_padding: int,
            flip: bool) -> jax.Array:
  """Random crop with `crop_padding` (0: none), then a random flip if `flip`.

  A pure function of (key, images): the same key gives the same batch.
  """
  images = random_crop(jax.random.fold_in(key, _CROP_STREAM), images, crop_padding)
  if flip:
    images = random_flip(jax.random.fold_in(key, _FLIP_STREAM), images)
  return images


def make_augment(crop_padding: int = 0, flip: bool = False) -> Augment | None:
  """The augmentation a config asks for, as `fn(key, images)`; None when it asks none.

  Args:
    crop_padding: pixels of zero padding on each side before a random crop back to
      the input size; 0 turns cropping off.
    flip: whether to mirror each image left-right with probability 0.5 (leave off for
      digits, whose mirror images are not digits).
  """
  valid = isinstance(crop_padding, int) and not isinstance(crop_padding, bool)
  if not valid or crop_padding < 0:
    raise ConfigError(f"crop_padding={crop_padding!r} must be an integer >= 0 "
                     "(0 turns random cropping off), e.g. --config.crop_padding=2.")
  if crop_padding == 0 and not flip:
    return None
  return functools.partial(augment, crop_padding=crop_padding, flip=bool(flip))


def mix(key: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int,
        mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
  """Mixup or cutmix of a batch with itself reversed; returns (images, soft targets).

  One ratio per batch, lambda ~ Beta(alpha, alpha). With both alphas set, each batch is
  mixed up or cut-mixed with probability 1/2 (as timm does). Cutmix pastes a box of
  area about 1 - lambda and sets lambda to the box's exact share of the image. Each
  target row sums to 1: the label mass is conserved. A pure function of the key.
  """
  k_choice, k_lambda, k_box = jax.random.split(key, 3)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  partner_images, partner_targets = images[::-1], one_hot[::-1]
  use_cutmix = (jax.random.bernoulli(k_choice, 0.5) if mixup_alpha and cutmix_alpha
                else jnp.asarray(bool(cutmix_alpha)))
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)  # The chosen one is > 0.
  lam = jax.random.beta(k_lambda, alpha, alpha)
  _, height, width, _ = images.shape
  cut_h = jnp.floor(height * jnp.sqrt(1 - lam)).astype(jnp.int32)
  cut_w = jnp.floor(width * jnp.sqrt(1 - lam)).astype(jnp.int32)
  cy, cx = (jax.random.randint(k, (), 0, n) for k, n in
            zip(jax.random.split(k_box), (height, width)))
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
  box_lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
  cut = jnp.where(box, partner_images, images)
  mixed = lam * images + (1 - lam) * partner_images
  out = jnp.where(use_cutmix, cut, mixed.astype(images.dtype))
  ratio = jnp.where(use_cutmix, box_lam, lam).astype(jnp.float32)
  return out, ratio * one_hot + (1 - ratio) * partner_targets


def make_mix(num_classes: int, mixup_alpha: float = 0.0,
             cutmix_alpha: float = 0.0) -> Callable | None:
  """`mix` with the config's alphas as `fn(key, images, labels)`; None when both are 0."""
  for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
    if value < 0:
      raise ConfigError(f"{name}={value!r} must be >= 0 (0 turns it off).")
  if not mixup_alpha and not cutmix_alpha:
    return None
  return functools.partial(mix, num_classes=num_classes, mixup_alpha=mixup_alpha,
                           cutmix_alpha=cutmix_alpha)
