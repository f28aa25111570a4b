"""`./run.sh predict --workdir W [--step latest|best|N] [--top_k K] [--json] FILE...`.

Each image file is converted as the training data was (PIL: to grayscale or RGB by the
run's channel count, resized bilinearly with antialiasing to the run's height and
width; normalisation happens inside the model function), then the top-k classes and
their probabilities are printed. An unreadable file is named and skipped; the others
are still predicted.
"""

import dataclasses
import json

import numpy as np

from cnn_jax import inference
from cnn_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Prediction:
  path: str
  top: list[tuple[str, float]] | None  # (class name, probability), best first
  error: str | None = None


def read_image(path: str, image_shape) -> np.ndarray:
  """A file as uint8 [H, W, C] of `image_shape` (raises ValueError if unreadable)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image = image.convert("L" if channels == 1 else "RGB")
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"{type(e).__name__}: {e}") from e
  return array.reshape(height, width, channels)


def predict_files(predictor: inference.Predictor, paths, top_k: int = 3,
                  batch_size: int = 256) -> list[Prediction]:
  """Top-k predictions for each file, in order; unreadable files carry an error."""
  images, readable, out = [], [], {}
  for path in paths:
    try:
      images.append(read_image(path, predictor.image_shape))
      readable.append(path)
    except ValueError as e:
      out[path] = Prediction(path, None, str(e))
  k = min(top_k, len(predictor.class_names))
  for start in range(0, len(images), batch_size):
    probs = predictor.probabilities(np.stack(images[start:start + batch_size]))
    for path, p in zip(readable[start:start + batch_size], probs):
      best = np.argsort(-p, kind="stable")[:k]
      out[path] = Prediction(path, [(predictor.class_names[i], float(p[i])) for i in best])
  return [out[p] for p in paths]


def predict_command(workdir: str, step: str, paths, top_k: int = 3,
                    as_json: bool = False) -> int:
  """Prints the predictions; returns 0, or 1 when some file could not be read."""
  if not paths:
    raise ConfigError("predict needs image files: ./run.sh predict --workdir W "
                      "[--top_k K] FILE...")
  if top_k < 1:
    raise ConfigError(f"--top_k={top_k}: give the number of classes to show per image, "
                      "1 or more.")
  predictor = inference.load(workdir, step)
  results = predict_files(predictor, paths, top_k)
  if as_json:
    print(json.dumps([{"file": r.path, "error": r.error,
                       "top": None if r.top is None else
                       [{"class": c, "probability": p} for c, p in r.top]}
                      for r in results], indent=2))
  else:
    for r in results:
      if r.error:
        print(f"{r.path}: cannot read it ({r.error}); skipped")
      else:
        print(f"{r.path}: " + ", ".join(f"{c} {p:.3f}" for c, p in r.top))
  return 1 if any(r.error for r in results) else 0
