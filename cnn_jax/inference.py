"""A trained run as a function: raw uint8 images in, class probabilities out.

`load(workdir, step)` restores a checkpoint of a run (into an abstract target, no
dataset needed: the image shape, class names and normalisation statistics come from the
run's dataset.json) and returns a `Predictor`. `predict` (image files) and `export`
(StableHLO, SavedModel) build on it.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import checkpoint as checkpoint_lib
from cnn_jax import mesh as mesh_lib
from cnn_jax import models
from cnn_jax import report as report_lib
from cnn_jax import run
from cnn_jax.data import preprocess as preprocess_lib


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A restored model: `probabilities(uint8 images [N, H, W, C])` -> [N, classes]."""
  model: object
  variables: dict
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  channel_mean: np.ndarray | None
  channel_std: np.ndarray | None
  step: int

  def function(self):
    """A pure function of (variables, uint8 images) -> probabilities, normalisation
    inside: what `export` serialises."""
    prep = preprocess_lib.make_preprocess(self.channel_mean, self.channel_std)

    def fn(variables, images):
      logits = self.model.apply(variables, prep(images), train=False)
      return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return fn

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.function())

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._jitted(self.variables, jnp.asarray(images, jnp.uint8)))


def load(workdir: str, step: str = "latest") -> Predictor:
  """The model of checkpoint `step` ('latest', 'best' or a number) of a run's workdir.

  Raises:
    CheckpointError: no such run, step or checkpoint.
  """
  workdir = os.path.abspath(workdir)
  config = run.load_config(workdir)
  path = os.path.join(workdir, report_lib.DATASET_FILE)
  if not os.path.exists(path):
    raise checkpoint_lib.CheckpointError(
        f"{path} does not exist: the run in {workdir!r} predates dataset.json; "
        "resume it once (./run.sh train with its config and workdir) to write it.")
  meta = report_lib.read_json(workdir, report_lib.DATASET_FILE)
  shape = tuple(meta["image_shape"])
  model = models.build_model(config.model, meta["num_classes"], config.dtype,
                             **config.model_kwargs)
  per_epoch = meta["splits"]["train"] // config.batch_size
  mesh = mesh_lib.make_mesh(jax.local_devices()[:1])
  abstract = jax.eval_shape(run.state_factory(config, model, shape, per_epoch),
                            jax.random.key(0))
  sharding = mesh_lib.replicated(mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
  ckpts = run.open_checkpoints(config, workdir)
  try:
    chosen = ckpts.resolve(step)
    state, _ = ckpts.restore(chosen, abstract)
  finally:
    ckpts.close()
  # A run that selects on its moving average serves it; others serve the weights.
  ema = state.ema_params is not None and "_ema_" in (config.best_metric or "")
  variables = {"params": state.ema_params if ema else state.params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  stats = lambda k: None if meta[k] is None else np.asarray(meta[k], np.float32)
  return Predictor(model, variables, shape, tuple(meta["class_names"]),
                   stats("channel_mean"), stats("channel_std"), chosen)
