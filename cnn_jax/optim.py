"""The optimizer: Adam on a learning-rate schedule, one registry dict of schedules.

A schedule is a function of the optimizer's own step count, so a resumed run
continues it where it stopped (the count is in the checkpointed optimizer state).
"""

from typing import Any, Callable

import jax
import optax

from cnn_jax.errors import ConfigError

# name -> fn(learning_rate, total_steps, warmup_steps) -> optax schedule (step -> lr).
# Each warms up linearly from 0 over warmup_steps (none when 0).
SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "constant": lambda lr, total, warmup: optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]),
    # Half a cosine from lr down to 0 at total_steps.
    "cosine": lambda lr, total, warmup: optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, total, end_value=0.0),
}


def make_schedule(name: str, learning_rate: float, total_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
  """The registered schedule `name`, checked.

  Args:
    name: a key of SCHEDULES.
    learning_rate: the peak learning rate.
    total_steps: steps of the whole run (where "cosine" reaches 0).
    warmup_steps: steps of linear warm-up from 0, fewer than total_steps.
  """
  if name not in SCHEDULES:
    raise ConfigError(f"Unknown lr_schedule {name!r}. Known schedules: "
                     f"{', '.join(sorted(SCHEDULES))}, e.g. --config.lr_schedule=cosine.")
  if not learning_rate > 0:
    raise ConfigError(f"learning_rate={learning_rate!r} must be > 0, e.g. "
                     "--config.learning_rate=1e-3.")
  if not 0 <= warmup_steps < total_steps:
    raise ConfigError(f"{warmup_steps} warm-up steps must be >= 0 and fewer than the "
                     f"run's {total_steps} steps; lower --config.warmup_epochs.")
  return SCHEDULES[name](learning_rate, total_steps, warmup_steps)


def decay_mask(params) -> Any:
  """True for the weights that weight decay applies to: kernels and embeddings (arrays
  of two or more dimensions), not biases or normalisation scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


# name -> fn(learning rate or schedule, weight_decay, **optimizer_kwargs) -> optax
# transformation. Weight decay only touches the weights of `decay_mask`: decoupled
# (scaled by the learning rate) for adamw, an L2 term added to the gradient for the
# others.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": lambda lr, wd, b1=0.9, b2=0.999, eps=1e-8: _l2(wd, optax.adam(
        lr, b1=b1, b2=b2, eps=eps)),
    "adamw": lambda lr, wd, b1=0.9, b2=0.999, eps=1e-8: optax.adamw(
        lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask),
    "sgd": lambda lr, wd, momentum=0.9, nesterov=False: _l2(wd, optax.sgd(
        lr, momentum=momentum or None, nesterov=nesterov)),
}


def _l2(weight_decay: float, tx: optax.GradientTransformation):
  if not weight_decay:
    return tx
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask), tx)


def check_optimizer(optimizer: str, optimizer_kwargs: dict | None) -> None:
  """Refuses an unknown optimizer, arguments it does not take, and values that are not
  numbers (True/False, None; a dtype's name for a *_dtype argument)."""
  if optimizer not in OPTIMIZERS:
    raise ConfigError(f"Unknown optimizer {optimizer!r}. Known: "
                      f"{', '.join(sorted(OPTIMIZERS))}, e.g. --config.optimizer=adamw.")
  kwargs = dict(optimizer_kwargs or {})
  for key, value in kwargs.items():
    if not (value is None or isinstance(value, (int, float))
            or key.endswith("_dtype") and isinstance(value, str)):
      raise ConfigError(f"config.optimizer_kwargs.{key}={value!r}: {optimizer!r} takes a "
                        "number there.")
  try:
    OPTIMIZERS[optimizer](1e-3, 0.0, **kwargs)
  except TypeError as e:
    raise ConfigError(f"config.optimizer_kwargs={kwargs} do not fit {optimizer!r} "
                      f"({e}).") from e


def make_optimizer(name: str, learning_rate: float, total_steps: int,
                   warmup_steps: int = 0, optimizer: str = "adam",
                   optimizer_kwargs: dict | None = None, weight_decay: float = 0.0,
                   grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
  """The optimizer `optimizer` (OPTIMIZERS) on `make_schedule(name, ...)`.

  Args:
    name, learning_rate, total_steps, warmup_steps: the schedule (`make_schedule`).
    optimizer: "adam" (the tutorial's), "adamw" or "sgd".
    optimizer_kwargs: its arguments (adam/adamw: b1, b2, eps; sgd: momentum, nesterov).
    weight_decay: see OPTIMIZERS.
    grad_clip_norm: clip the gradient to this global norm first (0: no clipping).

  The tutorial's settings (constant schedule, no warm-up, adam, no decay, no
  clipping) give plain `optax.adam(learning_rate)`, with the state of checkpoints
  written before schedules and optimizers were configurable.
  """
  check_optimizer(optimizer, optimizer_kwargs)
  schedule = make_schedule(name, learning_rate, total_steps, warmup_steps)
  if name == "constant" and warmup_steps == 0:
    schedule = learning_rate
  tx = OPTIMIZERS[optimizer](schedule, weight_decay, **(optimizer_kwargs or {}))
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
