"""The optimizer: Adam on a learning-rate schedule, one registry dict of schedules.

A schedule is a function of the optimizer's own step count, so a resumed run
continues it where it stopped (the count is in the checkpointed optimizer state).
"""

from typing import Callable

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


def make_optimizer(name: str, learning_rate: float, total_steps: int,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
  """Adam (the tutorial's optimizer) on `make_schedule(name, ...)`.

  The constant schedule without warm-up is plain `optax.adam(learning_rate)`, the
  tutorial's optimizer, with the same state as checkpoints written before schedules.
  """
  schedule = make_schedule(name, learning_rate, total_steps, warmup_steps)
  if name == "constant" and warmup_steps == 0:
    return optax.adam(learning_rate)
  return optax.adam(schedule)
