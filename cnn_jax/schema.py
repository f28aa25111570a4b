"""The config schema: every field of an experiment declared once.

`FIELDS` declares each field: its default (the Keras tutorial's: `default_config()`,
what experiments/seed_cnn.py returns), its check, its section, whether it is part of
the resume fingerprint and the value runs written before it had. Adding a field is
one declaration here plus the experiments that set it; `configs.check` checks every
field, `run.fingerprint` compares the fingerprint's, and runs written before a field
existed are read with its legacy value.

Nothing here imports JAX: experiment files import it while the command line is
parsed, before JAX's settings are made.
"""

import dataclasses
import importlib
import math
import numbers
import os
from typing import Any

import ml_collections

_PIPELINES = ("in_memory", "streaming", "auto")


def _int(lo=None):
  return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
          and (lo is None or v >= lo), f"an integer{'' if lo is None else f' >= {lo}'}")


def _real(check, text):
  return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v) and check(v), text)


def _one_of(*names):
  return (lambda v: v in names, f"one of {', '.join(map(repr, names))}")


def _registered(module: str, registry: str):
  """One of the names of `module`'s dict `registry`, imported when checked."""
  names = lambda: tuple(getattr(importlib.import_module(module), registry))
  return (lambda v: v in names(), lambda: f"one of {', '.join(map(repr, names()))}")


_STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_BOOL = (lambda v: isinstance(v, bool), "True or False")

_NONE = object()  # No legacy value: the field is as old as the first runs.
# Which part of the project consumes a field (and where its name is read:
# tests/test_configs.py checks each field reaches one).
SECTIONS = ("data", "model", "optimizer", "training", "checkpointing", "evaluation")


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field, declared once.

  Attributes:
    default: the value of the tutorial (experiments/seed_cnn.py: `default_config()`);
      its type is the field's type for `--config.FIELD=VALUE` overrides.
    check: (predicate, what is allowed: text or a function giving it), or None for a
      dict its owner checks.
    section: which part of the project consumes it (SECTIONS).
    fingerprint: part of a run's resume fingerprint (a change alters the trajectory;
      resuming with another value is refused).
    legacy: the value runs written before the field existed had (filled in when
      their config.json or checkpoint is read), or _NONE.
    field_type: the type of a field whose default is None.
  """
  default: Any
  check: tuple | None
  section: str
  fingerprint: bool = False
  legacy: Any = _NONE
  field_type: type | None = None


def _dict(**values):
  return lambda: ml_collections.ConfigDict(values)


# The fields of every experiment, by section. Comments say what each does.
FIELDS: dict[str, Field] = {
    # --- data ---
    "dataset": Field("mnist_5k", _STR, "data", fingerprint=True),
    # None: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    "data_dir": Field(None, (lambda v: v is None or (
        isinstance(v, str) and v != "" and not os.path.isfile(os.path.expanduser(v))),
                             "None (TFDS's default) or a directory (not a file)"),
                      "data", field_type=str),
    # Split specs as tfds.load reads them ("train", "train[:90%]", "train+test", ...).
    "train_split": Field("train", _STR, "data", fingerprint=True),
    "test_split": Field("test", _STR, "data"),
    # A validation split: a spec of the dataset's own (e.g. "validation"), or a share
    # of train_split held out, stratified by class, the same in every run (e.g. 0.1).
    # At most one of the two; "" and 0 for none (the tutorial trains on all of train).
    "validation_split": Field("", (lambda v: isinstance(v, str),
                                   "a split spec, or '' for none"), "data",
                              fingerprint=True, legacy=""),
    "validation_fraction": Field(0.0, _real(lambda v: 0 <= v < 1, "a number in [0, 1)"),
                                 "data", fingerprint=True, legacy=0.0),
    # "in_memory" (whole splits on the devices), "streaming" (Grain, chunk by chunk) or
    # "auto": in memory when the decoded train split is at most in_memory_max_bytes.
    # Splits of at most in_memory_max_bytes are also kept decoded on disk beside the
    # prepared dataset (cnn_jax/data/cache.py).
    "input_pipeline": Field("auto", _one_of(*_PIPELINES), "data"),
    "in_memory_max_bytes": Field(2 * 1024**3, _int(0), "data"),
    # Streaming only: Grain worker processes that read and decode batches (0: threads
    # of the training process, enough for cached data).
    "data_workers": Field(0, _int(0), "data", legacy=0),
    # Only for dataset = "folder:/path" (class subfolders of images): every image is
    # converted to this (height, width, channels); a single tree of class folders is
    # split with this share of each class as test; unreadable files: "skip" or "error".
    "image_size": Field((28, 28, 1), (lambda v: isinstance(v, (tuple, list)) and len(
        v) == 3 and all(isinstance(s, int) and s > 0 for s in v) and v[2] in (1, 3),
                                      "(height, width, channels) with channels 1 or 3"),
                        "data"),
    "folder_test_fraction": Field(0.2, _real(lambda v: 0 < v < 1, "a number in (0, 1)"),
                                  "data"),
    "on_bad_image": Field("skip", _one_of("skip", "error"), "data"),
    # Training-time augmentation (cnn_jax.data.augment), off in the tutorial: pixels of
    # zero padding before a random crop back to size (0: no crop), random left-right
    # flip.
    "crop_padding": Field(0, _int(0), "data", fingerprint=True),
    "flip": Field(False, _BOOL, "data", fingerprint=True),
    # Per-channel (x - mean) / std with statistics of the training split, after / 255.
    "normalize": Field(False, _BOOL, "data", fingerprint=True),
    "batch_size": Field(32, _int(1), "data", fingerprint=True),
    # Measured on a 2-core CPU: the tutorial CNN evaluates at about 40,000 img/s in
    # batches of 250 and 20,000 in batches of 1,000, whose activations (86 MB in the
    # first layer) no longer fit the CPU's caches. A multiple of 8 devices; metrics do
    # not depend on it.
    "eval_batch_size": Field(256, _int(1), "data"),
    # --- model ---
    # A MODELS name (cnn_jax/models) or "package.module:Class"; model_kwargs go to
    # its constructor.
    "model": Field("seed_cnn", _STR, "model", fingerprint=True),
    "model_kwargs": Field(_dict(), None, "model", fingerprint=True),
    # Computation dtype of activations, matmuls and convolutions
    # (cnn_jax/models:DTYPES): "float32" or "bfloat16" (mixed precision: parameters,
    # optimizer state and the loss stay float32; on CPU it is slower, see the README).
    "dtype": Field("float32", _registered("cnn_jax.models", "DTYPES"), "model", fingerprint=True,
                   legacy="float32"),
    # --- optimizer ---
    "learning_rate": Field(1e-3, _real(lambda v: v > 0, "a finite number > 0"),
                           "optimizer", fingerprint=True),
    # Learning rate over the run (cnn_jax/optim.py:SCHEDULES): "constant" (the
    # tutorial) or "cosine" (down to 0 at the last step), after warmup_epochs (a
    # float: fractions allowed) of linear warm-up.
    "lr_schedule": Field("constant", _registered("cnn_jax.optim", "SCHEDULES"), "optimizer",
                         fingerprint=True, legacy="constant"),
    "warmup_epochs": Field(0.0, _real(lambda v: v >= 0, "a number >= 0"), "optimizer",
                           fingerprint=True, legacy=0),
    # Optimizer (cnn_jax/optim.py:OPTIMIZERS): "adam" (the tutorial's), "adamw" or
    # "sgd"; optimizer_kwargs: its arguments (adam, adamw: b1, b2, eps; sgd: momentum
    # (0.9), nesterov). weight_decay: decoupled for adamw, an L2 term for the others,
    # never on biases or normalisation parameters. grad_clip_norm: global-norm
    # clipping (0: off).
    "optimizer": Field("adam", _registered("cnn_jax.optim", "OPTIMIZERS"), "optimizer",
                       fingerprint=True, legacy="adam"),
    "optimizer_kwargs": Field(_dict(), None, "optimizer", fingerprint=True, legacy={}),
    "weight_decay": Field(0.0, _real(lambda v: v >= 0, "a number >= 0"), "optimizer",
                          fingerprint=True, legacy=0.0),
    "grad_clip_norm": Field(0.0, _real(lambda v: v >= 0, "a number >= 0 (0: no "
                                       "clipping)"), "optimizer", fingerprint=True,
                            legacy=0.0),
    # --- training ---
    "num_epochs": Field(5, _int(1), "training"),
    "seed": Field(0, _int(), "training", fingerprint=True),
    # Regularisation: label smoothing; mixup and cutmix (Beta(alpha, alpha) ratios, on
    # the device from the step's key; both set: one or the other per batch; 0: off).
    "label_smoothing": Field(0.0, _real(lambda v: 0 <= v < 1, "a number in [0, 1)"),
                             "training", fingerprint=True, legacy=0.0),
    "mixup_alpha": Field(0.0, _real(lambda v: v >= 0, "a number >= 0 (0: off)"),
                         "training", fingerprint=True, legacy=0.0),
    "cutmix_alpha": Field(0.0, _real(lambda v: v >= 0, "a number >= 0 (0: off)"),
                          "training", fingerprint=True, legacy=0.0),
    # Split each batch into this many micro-batches whose gradients make one update.
    "grad_accum_steps": Field(1, _int(1), "training", fingerprint=True, legacy=1),
    # Keep an exponential moving average of the weights (0: off); every evaluator then
    # runs on it too, as <name>_ema.
    "ema_decay": Field(0.0, _real(lambda v: 0 <= v < 1, "a number in [0, 1) (0: off)"),
                       "training", fingerprint=True, legacy=0.0),
    # Training steps run per dispatch to the device (lax.scan); also the progress
    # bar's tick.
    "steps_per_dispatch": Field(50, _int(1), "training"),
    # Stop (keeping the last checkpoint, exit 3) when a dispatch's training loss is
    # NaN, infinite or above divergence_factor x ln(classes), the loss of a uniform
    # guess (0: NaN/inf only).
    "divergence_factor": Field(10.0, _real(lambda v: v == 0 or v > 1, "0 (NaN/inf only) "
                                           "or a factor > 1 of ln(classes)"),
                               "training", legacy=10.0),
    # --- evaluation ---
    # Evaluators (cnn_jax/evaluators.py): a named split, every N epochs (and after the
    # last), metrics among loss, accuracy, top_k, per_class (precision/recall/F1,
    # macro F1) and confusion (kept in evals/<name>/<step>.json). Their scalars go into
    # the epoch records as <name>_loss, <name>_accuracy, <name>_top<k>_accuracy, ...
    "evals": Field(_dict(test=dict(split="test", every_epochs=1, top_k=5, metrics=(
        "loss", "accuracy", "top_k", "per_class", "confusion"))), None, "evaluation",
                   legacy={"test": {"split": "test"}}),
    # --- checkpointing ---
    # Also save every N steps inside an epoch (0: at epoch ends only).
    "checkpoint_every_steps": Field(0, _int(0), "checkpointing"),
    "keep_checkpoints": Field(2, _int(1), "checkpointing"),
    # Selection: keep the best keep_best_checkpoints by best_metric, a metric of an
    # evaluator of a split other than test (e.g. "validation_accuracy"). The tutorial
    # trains on all of train and reports test, so it keeps the latest checkpoints
    # only.
    "keep_best_checkpoints": Field(0, _int(0), "checkpointing"),
    "best_metric": Field("", (lambda v: isinstance(v, str),
                              "a metric name, or '' for none"), "checkpointing"),
    "best_mode": Field("max", _one_of("max", "min"), "checkpointing"),
}


def legacy_defaults(fingerprint_only: bool = False) -> dict:
  """Fields added after runs were written, with the value those runs had (for reading
  their config.json back: eval, predict, export, report; and, `fingerprint_only`,
  their checkpoints' fingerprints)."""
  return {k: f.legacy for k, f in FIELDS.items()
          if f.legacy is not _NONE and (f.fingerprint or not fingerprint_only)}


def fingerprint_fields() -> tuple[str, ...]:
  """The fields of a run's resume fingerprint (run.fingerprint), in FIELDS' order."""
  return tuple(k for k, f in FIELDS.items() if f.fingerprint)


def default_config() -> ml_collections.ConfigDict:
  """Every field at its default: the Keras tutorial on the embedded dataset."""
  config = ml_collections.ConfigDict()
  for name, field in FIELDS.items():
    value = field.default() if callable(field.default) else field.default
    config[name] = (ml_collections.FieldReference(None, field_type=field.field_type)
                    if value is None else value)
  return config


def section(config, name: str) -> ml_collections.ConfigDict:
  """The fields of `config` in section `name` (SECTIONS): what that part of the project
  receives (the data pipeline: `section(config, "data")`)."""
  if name not in SECTIONS:
    raise ValueError(f"Unknown section {name!r}; sections: {', '.join(SECTIONS)}.")
  return ml_collections.ConfigDict(
      {k: config[k] for k, f in FIELDS.items() if f.section == name})


def with_legacy_defaults(saved: dict) -> dict:
  """A saved config with the fields it predates filled in (`legacy_defaults`)."""
  return {**legacy_defaults(), **saved}


