"""Experiment configs: every field checked before any data is read or directory made.

`check(config)` raises `ConfigError` naming the field, its value and what is allowed,
for the fields of experiments/seed_cnn.py (which defines and comments each) and their
combinations: batch sizes that divide over the devices and processes, `model_kwargs`
against the model's fields, the dataset's name (`data.source.check_dataset`), the
selection metric against the evaluators.
"""

import math
import numbers
import os

from cnn_jax import evaluators as evaluators_lib
from cnn_jax import models
from cnn_jax import optim
from cnn_jax.data import source
from cnn_jax.errors import ConfigError

_PIPELINES = ("in_memory", "streaming", "auto")


def _int(lo=None):
  return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
          and (lo is None or v >= lo), f"an integer{'' if lo is None else f' >= {lo}'}")


def _real(check, text):
  return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v) and check(v), text)


def _one_of(*names):
  return (lambda v: v in names, f"one of {', '.join(map(repr, names))}")


_STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_BOOL = (lambda v: isinstance(v, bool), "True or False")

# field -> (predicate, what is allowed). Fields of experiments/seed_cnn.py.
FIELDS = {
    "model": _STR,
    "dataset": _STR,
    "data_dir": (lambda v: v is None or (isinstance(v, str) and v != "" and not
                                        os.path.isfile(os.path.expanduser(v))),
                 "None (TFDS's default) or a directory (not a file)"),
    "train_split": _STR,
    "test_split": _STR,
    "validation_split": (lambda v: isinstance(v, str), "a split spec, or '' for none"),
    "validation_fraction": _real(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "input_pipeline": _one_of(*_PIPELINES),
    "in_memory_max_bytes": _int(0),
    "data_workers": _int(0),
    "image_size": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(
        isinstance(s, int) and s > 0 for s in v) and v[2] in (1, 3),
                   "(height, width, channels) with channels 1 or 3"),
    "folder_test_fraction": _real(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "on_bad_image": _one_of("skip", "error"),
    "crop_padding": _int(0),
    "flip": _BOOL,
    "normalize": _BOOL,
    "batch_size": _int(1),
    "eval_batch_size": _int(1),
    "num_epochs": _int(1),
    "learning_rate": _real(lambda v: v > 0, "a finite number > 0"),
    "lr_schedule": _one_of(*optim.SCHEDULES),
    "warmup_epochs": _real(lambda v: v >= 0, "a number >= 0"),
    "seed": _int(),
    "dtype": _one_of(*models.DTYPES),
    "steps_per_dispatch": _int(1),
    "checkpoint_every_steps": _int(0),
    "keep_checkpoints": _int(1),
    "keep_best_checkpoints": _int(0),
    "best_metric": (lambda v: isinstance(v, str), "a metric name, or '' for none"),
    "best_mode": _one_of("max", "min"),
    "optimizer": _one_of(*optim.OPTIMIZERS),
    "weight_decay": _real(lambda v: v >= 0, "a number >= 0"),
    "grad_clip_norm": _real(lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
    "label_smoothing": _real(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "mixup_alpha": _real(lambda v: v >= 0, "a number >= 0 (0: off)"),
    "cutmix_alpha": _real(lambda v: v >= 0, "a number >= 0 (0: off)"),
    "grad_accum_steps": _int(1),
    "ema_decay": _real(lambda v: 0 <= v < 1, "a number in [0, 1) (0: off)"),
    "divergence_factor": _real(lambda v: v == 0 or v > 1,
                               "0 (NaN/inf only) or a factor > 1 of ln(classes)"),
}
# Fields that hold dicts of their own, checked by their owners.
NESTED = ("model_kwargs", "optimizer_kwargs", "evals")


# Fields added after runs were written, with the value those runs had (for reading
# their config.json back: eval, predict, export, report).
LEGACY_DEFAULTS = {
    "validation_split": "", "validation_fraction": 0.0, "data_workers": 0,
    "evals": {"test": {"split": "test"}}, "divergence_factor": 10.0,
    "optimizer": "adam", "optimizer_kwargs": {}, "weight_decay": 0.0,
    "grad_clip_norm": 0.0, "label_smoothing": 0.0, "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0, "grad_accum_steps": 1, "ema_decay": 0.0, "dtype": "float32",
}


def with_legacy_defaults(saved: dict) -> dict:
  """A saved config with the fields it predates filled in (LEGACY_DEFAULTS)."""
  return {**LEGACY_DEFAULTS, **saved}


def _fail(field, value, allowed, hint=""):
  raise ConfigError(f"config.{field}={value!r} is not allowed: expected {allowed}."
                    + (f" {hint}" if hint else ""))


def check(config, device_count: int, process_count: int) -> None:
  """Checks every field of an experiment config (see the module docstring).

  Raises:
    ConfigError: the first field that is wrong, with what is allowed.
  """
  unknown = sorted(set(config.keys()) - set(FIELDS) - set(NESTED))
  if unknown:
    raise ConfigError(f"config has unknown field(s) {', '.join(unknown)}; known fields "
                      "are those of experiments/seed_cnn.py (a typo?).")
  for field, (ok, allowed) in FIELDS.items():
    if field not in config:
      raise ConfigError(f"config has no field {field!r}; start experiment configs from "
                        "experiments/seed_cnn.py:get_config(), which defines every field.")
    if not ok(config[field]):
      _fail(field, config[field], allowed)
  for field in ("batch_size", "eval_batch_size"):
    for count, what in ((device_count, "devices"), (process_count, "processes")):
      if config[field] % count:
        _fail(field, config[field], f"a multiple of the {count} {what}",
              f"e.g. --config.{field}={max(count, config[field] // count * count)}.")
  micro = config.grad_accum_steps * device_count
  if config.batch_size % micro:
    _fail("grad_accum_steps", config.grad_accum_steps,
          f"a divisor of batch_size={config.batch_size} whose micro-batches divide over "
          f"the {device_count} devices")
  if config.warmup_epochs >= config.num_epochs:
    _fail("warmup_epochs", config.warmup_epochs,
          f"fewer than num_epochs={config.num_epochs}")
  if config.keep_best_checkpoints and not config.best_metric:
    _fail("keep_best_checkpoints", config.keep_best_checkpoints, "0 without a best_metric",
          "Set --config.best_metric=validation_accuracy (with a validation split) or "
          "--config.keep_best_checkpoints=0.")
  if config.best_metric and not config.keep_best_checkpoints:
    _fail("best_metric", config.best_metric, "'' when keep_best_checkpoints=0",
          "Keep best checkpoints with --config.keep_best_checkpoints=1.")
  if config.validation_split and config.validation_fraction:
    _fail("validation_fraction", config.validation_fraction,
          f"0 when validation_split={config.validation_split!r} names a split")
  models.check_model(config.model, dict(config.model_kwargs), config.dtype)
  optim.check_optimizer(config.optimizer, dict(config.optimizer_kwargs))
  source.check_dataset(config.dataset, config.data_dir)
  splits = ["train", *(["validation"] if config.validation_split or
                       config.validation_fraction else []), "test"]
  evaluators = evaluators_lib.from_config(config.evals, splits, ema=config.ema_decay > 0)
  evaluators_lib.check_selection(config.best_metric, evaluators)
