"""Experiment configs: every field checked before any data is read or directory made.

`check(config)` raises `ConfigError` naming the field, its value and what is allowed,
for every field of the schema (cnn_jax/schema.py) and their combinations: batch
sizes that divide over the devices and processes, `model_kwargs` against the
model's fields, the dataset's name (`data.source.check_dataset`), the selection
metric against the evaluators.
"""

from cnn_jax import evaluators as evaluators_lib
from cnn_jax import models
from cnn_jax import optim
from cnn_jax import schema
from cnn_jax.data import source
from cnn_jax.errors import ConfigError


def _fail(field, value, allowed, hint=""):
  raise ConfigError(f"config.{field}={value!r} is not allowed: expected {allowed}."
                    + (f" {hint}" if hint else ""))


def check(config, device_count: int, process_count: int) -> None:
  """Checks every field of an experiment config (see the module docstring).

  Raises:
    ConfigError: the first field that is wrong, with what is allowed.
  """
  unknown = sorted(set(config.keys()) - set(schema.FIELDS))
  if unknown:
    raise ConfigError(f"config has unknown field(s) {', '.join(unknown)}; known fields "
                      "are those of cnn_jax/schema.py (a typo?).")
  for field, declared in schema.FIELDS.items():
    if field not in config:
      raise ConfigError(f"config has no field {field!r}; start experiment configs from "
                        "experiments/seed_cnn.py:get_config() (schema.default_config()), "
                        "which defines every field.")
    if declared.check and not declared.check[0](config[field]):
      allowed = declared.check[1]
      _fail(field, config[field], allowed() if callable(allowed) else allowed)
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
