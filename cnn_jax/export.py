"""`./run.sh export --workdir W [--step ...] --format stablehlo|savedmodel --out DIR`.

The exported function maps raw uint8 images [batch, H, W, C] (batch size symbolic) to
class probabilities [batch, classes], normalisation inside, weights baked in.

- stablehlo: `jax.export` serialised to DIR/model.stablehlo; reload with
  `jax.export.deserialize(open(path, "rb").read()).call(images)`.
- savedmodel: `jax2tf` in a `tf.Module` saved to DIR (TensorFlow needed here and to
  load it: `tf.saved_model.load(DIR).serve(images)`).

Both write DIR/labels.json: class names, input shape and dtype. Both hold XLA's ops
only: the CPU backend (cnn_jax/cpu), whose custom calls no other process could run,
lowers nothing for `jax.export`.
"""

import json
import os

import jax
import numpy as np

from cnn_jax import inference
from cnn_jax.errors import ConfigError

FORMATS = ("stablehlo", "savedmodel")
STABLEHLO_FILE = "model.stablehlo"
LABELS_FILE = "labels.json"


def _bound(predictor: inference.Predictor):
  fn = predictor.function()
  variables = jax.tree.map(np.asarray, predictor.variables)
  return lambda images: fn(variables, images)


def export_stablehlo(predictor: inference.Predictor, out_dir: str) -> str:
  """Serialises the model function for CPU, CUDA and TPU; returns the file's path."""
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  (batch,) = jax_export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *predictor.image_shape), np.uint8)
  exported = jax_export.export(jax.jit(_bound(predictor)),
                               platforms=("cpu", "cuda", "tpu"))(spec)
  path = os.path.join(out_dir, STABLEHLO_FILE)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  return path


def export_savedmodel(predictor: inference.Predictor, out_dir: str) -> str:
  """Saves the model function as a TensorFlow SavedModel (signature `serve`)."""
  from cnn_jax.data.tfds_base import tensorflow  # pylint: disable=g-import-not-at-top
  tf = tensorflow()  # First: jax2tf imports TensorFlow, whose logging is set on import.
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  h, w, c = predictor.image_shape
  converted = jax2tf.convert(_bound(predictor), polymorphic_shapes=[f"(b, {h}, {w}, {c})"],
                             with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(converted, autograph=False, input_signature=[
      tf.TensorSpec((None, h, w, c), tf.uint8, name="images")])
  tf.saved_model.save(module, out_dir)
  return out_dir


def export_command(workdir: str, step: str, fmt: str, out_dir: str | None) -> str:
  """Exports checkpoint `step` of a run in `fmt` into `out_dir`; returns the path."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}: use one of {', '.join(FORMATS)}.")
  if not out_dir:
    raise ConfigError("export needs --out DIR (a new or empty directory).")
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise ConfigError(f"--out {out_dir} is " + ("not empty" if os.path.isdir(out_dir)
                                                else "a file") +
                      "; give a new or empty directory.")
  predictor = inference.load(workdir, step)
  os.makedirs(out_dir, exist_ok=True)
  path = (export_stablehlo if fmt == "stablehlo" else export_savedmodel)(predictor,
                                                                        out_dir)
  with open(os.path.join(out_dir, LABELS_FILE), "w") as f:
    json.dump({"class_names": list(predictor.class_names),
               "input_shape": [None, *predictor.image_shape], "input_dtype": "uint8",
               "output": "class probabilities", "step": predictor.step}, f, indent=2)
  print(f"exported step {predictor.step} of {workdir} as {fmt} to {path}")
  return path
