"""Evaluators: which named split, how often, which metrics (big_vision's `config.evals`).

`config.evals` is a ConfigDict of named evaluators, e.g.

  config.evals.validation = dict(split="validation", every_epochs=1)
  config.evals.test = dict(split="test", every_epochs=1, top_k=5)

Each writes '<name>_loss', '<name>_accuracy', ... into the epoch record when due (and
always after the last epoch). Selection (best checkpoint) reads an evaluator's metric,
and never one of an evaluator of the test split: `check_selection`.
"""

import dataclasses

from cnn_jax.errors import ConfigError

METRICS = ("loss", "accuracy", "top_k", "per_class", "confusion")
TEST_SPLIT = "test"


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One evaluation: a named split, every `every_epochs` epochs, `metrics`."""
  name: str
  split: str
  every_epochs: int = 1
  metrics: tuple[str, ...] = METRICS
  top_k: int = 5
  ema: bool = False  # Evaluates the moving average of the weights.
  tta: str = "none"  # Test-time views whose logits are averaged (augment.TTA_VIEWS).

  def due(self, epoch: int, num_epochs: int) -> bool:
    """Whether it runs after (1-based) `epoch`: every `every_epochs`, and the last."""
    return epoch % self.every_epochs == 0 or epoch == num_epochs

  def scalar_names(self) -> list[str]:
    """The record keys it writes."""
    names = {"loss": ["loss"], "accuracy": ["accuracy"],
             "top_k": [f"top{self.top_k}_accuracy"],
             "per_class": ["macro_f1"], "confusion": []}
    return [f"{self.name}_{n}" for m in self.metrics for n in names[m]]


def from_config(evals, splits, ema: bool = False) -> list[Evaluator]:
  """The evaluators of `config.evals`, checked against the dataset's named `splits`.

  A run with a validation split that no evaluator reads gets one, named "validation",
  with every metric, every epoch. With `ema`, each evaluator gets a twin on the moving
  average of the weights, named "<name>_ema".

  Raises:
    ConfigError: an unknown split or metric, or a bad period or k.
  """
  out = []
  for name, spec in evals.items():
    spec = dict(spec)
    unknown = set(spec) - {f.name for f in dataclasses.fields(Evaluator)} - {"name"}
    if unknown:
      raise ConfigError(f"config.evals.{name} has unknown field(s) {sorted(unknown)}; "
                        "fields: split, every_epochs, metrics, top_k, ema, tta.")
    ev = Evaluator(name=name, **{**spec, "metrics": tuple(spec.get("metrics", METRICS))})
    if ev.split not in splits:
      raise ConfigError(
          f"config.evals.{name}.split={ev.split!r} is not a split of this run; it has "
          f"{', '.join(splits)} (a validation split needs --config.validation_fraction "
          "or --config.validation_split).")
    bad = set(ev.metrics) - set(METRICS)
    if bad:
      raise ConfigError(f"config.evals.{name}.metrics has unknown {sorted(bad)}; "
                        f"known: {', '.join(METRICS)}.")
    if not (isinstance(ev.every_epochs, int) and ev.every_epochs >= 1):
      raise ConfigError(f"config.evals.{name}.every_epochs={ev.every_epochs!r} must be "
                        "an integer >= 1.")
    if ev.ema and not ema:
      raise ConfigError(f"config.evals.{name}.ema=True needs a moving average: set "
                        "--config.ema_decay (e.g. 0.999).")
    from cnn_jax.data import augment  # JAX's import, only where evaluators are built.
    if ev.tta not in augment.TTA_VIEWS:
      raise ConfigError(f"config.evals.{name}.tta={ev.tta!r} is not a test-time "
                        f"augmentation; known: {', '.join(augment.TTA_VIEWS)}.")
    if not (isinstance(ev.top_k, int) and ev.top_k >= 1):
      raise ConfigError(f"config.evals.{name}.top_k={ev.top_k!r} must be an integer >= 1.")
    out.append(ev)
  if "validation" in splits and not any(ev.split == "validation" for ev in out):
    out.insert(0, Evaluator(name="validation", split="validation"))
  if ema:
    out += [dataclasses.replace(ev, name=f"{ev.name}_ema", ema=True) for ev in out
            if not ev.ema]
  if not out:
    raise ConfigError("config.evals is empty: name at least one evaluator, e.g. "
                      "config.evals.test = dict(split='test').")
  return out


def check_selection(best_metric: str, evaluators: list[Evaluator]) -> None:
  """Refuses a selection metric that reads the test split or that no evaluator writes.

  `best_metric` '' keeps no best checkpoint (the latest ones only).
  """
  if not best_metric:
    return
  for ev in evaluators:
    if best_metric in ev.scalar_names():
      if ev.split == TEST_SPLIT:
        raise ConfigError(
            f"best_metric={best_metric!r} selects checkpoints on the test split "
            f"(evaluator {ev.name!r}): a result chosen on test is not a test result. "
            "Hold out a validation split (--config.validation_fraction=0.1) and select "
            "on it (--config.best_metric=validation_accuracy), or keep the latest "
            "checkpoints only (--config.best_metric='').")
      if ev.every_epochs != 1:
        raise ConfigError(
            f"best_metric={best_metric!r} comes from evaluator {ev.name!r}, which runs "
            f"every {ev.every_epochs} epochs; selection needs it every epoch "
            f"(--config.evals.{ev.name}.every_epochs=1).")
      return
  known = [n for ev in evaluators for n in ev.scalar_names()
           if ev.split != TEST_SPLIT]
  raise ConfigError(
      f"best_metric={best_metric!r} is not a metric of this run's evaluators; "
      f"selectable: {', '.join(known) or 'none (no validation evaluator)'}, or '' for "
      "the latest checkpoints only.")
