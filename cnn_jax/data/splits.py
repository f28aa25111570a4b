"""Named splits ("train", "validation", "test") as examples of the dataset's splits.

A named split comes from a TFDS split spec (`train`, `train[:1280]`, `train+test`,
`train[:90%]`, as `tfds.load` reads them) and, for "validation", possibly from a
stratified hold-out of the training spec: `config.validation_fraction` of each class,
chosen by a fixed seed, so it is the same in every run, process and process count.
"""

import dataclasses
import types
from typing import Callable

import numpy as np

from cnn_jax.data.cache import BaseSplit
from cnn_jax.data.source import DatasetError

# The hold-out never depends on the run's seed: runs of different seeds (and sweeps)
# compare on the same validation examples.
HOLDOUT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
  """Examples of a named split: (base split, indices into it) parts, in order."""
  parts: tuple[tuple[BaseSplit, np.ndarray], ...]

  def __len__(self) -> int:
    return sum(len(indices) for _, indices in self.parts)

  def _locate(self, positions):
    positions = np.asarray(positions, np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
      raise IndexError(f"positions outside [0, {len(self)})")
    offsets = np.cumsum([0] + [len(i) for _, i in self.parts])
    part = np.searchsorted(offsets, positions, side="right") - 1
    return positions, offsets, part

  def read(self, positions) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W, C], labels int32 [n]) of the examples at `positions`."""
    positions, offsets, part = self._locate(positions)
    if len(self.parts) == 1:
      base, indices = self.parts[0]
      return base.read(indices[positions])
    images, labels = None, np.zeros(len(positions), np.int32)
    for p, (base, indices) in enumerate(self.parts):
      where = np.nonzero(part == p)[0]
      if not where.size:
        continue
      x, y = base.read(indices[positions[where] - offsets[p]])
      if images is None:
        images = np.zeros((len(positions), *x.shape[1:]), x.dtype)
      images[where], labels[where] = x, y
    return images, labels

  def labels(self) -> np.ndarray:
    return np.concatenate([base.labels()[indices] for base, indices in self.parts])

  def subset(self, positions) -> "Split":
    """The examples at `positions` (sorted), as a split."""
    positions, offsets, part = self._locate(np.sort(positions))
    return Split(tuple(
        (base, indices[positions[part == p] - offsets[p]])
        for p, (base, indices) in enumerate(self.parts) if (part == p).any()))


def from_spec(spec: str, known: list[str], open_base: Callable[[str], BaseSplit]) -> Split:
  """The examples a TFDS split spec names.

  Args:
    spec: e.g. "train", "train[:1280]", "train[10%:]+test".
    known: the dataset's split names (empty: not known, e.g. mocked datasets).
    open_base: split name -> its `BaseSplit`.
  """
  if spec in known:  # A whole split: no spec to parse.
    base = open_base(spec)
    return Split(((base, np.arange(base.num_examples)),))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Sizes(dict):
    def __contains__(self, name):
      return not known or name in known

    def __missing__(self, name):
      n = open_base(name).num_examples
      self[name] = types.SimpleNamespace(num_examples=n, shard_lengths=[n])
      return self[name]
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(Sizes())
  except DatasetError:
    raise
  except (ValueError, AssertionError) as e:
    raise DatasetError(
        f"Split spec {spec!r}: {e} The dataset's splits: {', '.join(known) or '?'}; "
        "specs read as in tfds.load, e.g. 'train', 'train[:90%]', 'train+test'.") from e
  parts = []
  for i in instructions:
    base = open_base(i.splitname)
    stop = base.num_examples if i.to is None else i.to
    parts.append((base, np.arange(i.from_ or 0, stop)))
  return Split(tuple(parts))


def holdout_mask(labels: np.ndarray, fraction: float) -> np.ndarray:
  """Which examples to hold out: round(fraction * n_c) of each class c, at random
  (seeded by HOLDOUT_SEED and the class), the same for the same labels."""
  held = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    (where,) = np.nonzero(labels == c)
    count = int(round(fraction * len(where)))
    rng = np.random.default_rng([HOLDOUT_SEED, int(c)])
    held[where[rng.permutation(len(where))[:count]]] = True
  return held


def _examples(split: Split) -> set[tuple[int, int]]:
  """(base split, index) of each example: equal across splits of one dataset."""
  return {(id(base), int(i)) for base, indices in split.parts for i in indices}


def named_splits(config, known: list[str],
                 open_base: Callable[[str], BaseSplit]) -> dict[str, Split]:
  """{"train", "test"} and, when the config asks for one, "validation".

  Config fields read: train_split, test_split, validation_split (a spec, or "" for
  none), validation_fraction (a share of train_split to hold out, or 0).
  """
  fraction, spec = config.validation_fraction, config.validation_split
  if spec and fraction:
    raise DatasetError(
        f"validation_split={spec!r} and validation_fraction={fraction!r} both ask for a "
        "validation split; set one of them (the other to '' or 0).")
  if not 0 <= fraction < 1:
    raise DatasetError(f"validation_fraction={fraction!r} must be in [0, 1), e.g. "
                       "--config.validation_fraction=0.1 (0: no hold-out).")
  splits = {"train": from_spec(config.train_split, known, open_base),
            "test": from_spec(config.test_split, known, open_base)}
  if spec:
    splits["validation"] = from_spec(spec, known, open_base)
  elif fraction:
    train = splits["train"]
    held = holdout_mask(train.labels(), fraction)
    if not held.any() or held.all():
      raise DatasetError(
          f"validation_fraction={fraction} holds out {held.sum()} of the "
          f"{len(train)} examples of {config.train_split!r}; choose a fraction that "
          "leaves examples on both sides.")
    splits["train"] = train.subset(np.nonzero(~held)[0])
    splits["validation"] = train.subset(np.nonzero(held)[0])
  if "validation" in splits:  # Selection must see neither training nor test examples.
    held = _examples(splits["validation"])
    for other in ("train", "test"):
      shared = len(held & _examples(splits[other]))
      if shared:
        raise DatasetError(
            f"The validation split ({spec or f'{fraction} of {config.train_split!r}'}) "
            f"shares {shared} examples with the {other} split "
            f"({config[f'{other}_split']!r}); choosing on it would read "
            f"{'test' if other == 'test' else 'training'} data. Use disjoint specs, e.g. "
            "train_split='train[:90%]' with validation_split='train[90%:]'.")
  for name, split in splits.items():
    if not len(split):
      raise DatasetError(f"The {name} split ({config.get(f'{name}_split') or name!r}) "
                         "has no examples.")
  return splits
