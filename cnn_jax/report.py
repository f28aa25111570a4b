"""What a run tells its user: console lines, a progress bar, metrics.jsonl, config.json."""

import json
import os
import sys

import jax
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class Reporter:
  """Writes the run's records; only process 0 writes files or prints."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.is_main = jax.process_index() == 0

  def write_config(self, config) -> None:
    if self.is_main:
      _atomic_write(os.path.join(self.workdir, CONFIG_FILE), config.to_json_best_effort(
          indent=2, sort_keys=True) + "\n")

  def epoch(self, record: dict) -> None:
    """Appends one epoch's record to metrics.jsonl and prints it."""
    if not self.is_main:
      return
    with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    print(f"epoch {record['epoch']:3d}  step {record['step']:7d}  "
          f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
          f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}  "
          f"{record['images_per_sec']:,.0f} img/s  eval {record['eval_images_per_sec']:,.0f}"
          " img/s", flush=True)

  def info(self, message: str) -> None:
    if self.is_main:
      print(message, flush=True)

  def progress(self, total: int, initial: int, epoch: int):
    """A progress bar over an epoch's steps, on a terminal only."""
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step",
                leave=False, disable=not (self.is_main and sys.stdout.isatty()))


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl, oldest first."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, after_step: int) -> None:
  """Drops records past `after_step` (written after the checkpoint a run resumes from)."""
  records = read_metrics(workdir)
  kept = [r for r in records if r["step"] <= after_step]
  if len(kept) != len(records) and jax.process_index() == 0:
    _atomic_write(os.path.join(workdir, METRICS_FILE),
                  "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
