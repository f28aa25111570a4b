"""What a run tells its user: console lines, a progress bar, metrics.jsonl, config.json,
dataset.json, model.json, evaluation details (evals/<name>/<step>.json) and TensorBoard
events.

TensorBoard event files (`tensorboard/` in the workdir) are written with tensorboardX,
which needs no TensorFlow: training loss, accuracy and learning rate after every
dispatch, each evaluator's scalars and the epoch's speed after every epoch, and the
config as hyperparameters and text. `tensorboard --logdir WORKDIR` shows them.
"""

import json
import os
import sys

import jax
import numpy as np
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
MODEL_FILE = "model.json"
EVALS_DIR = "evals"
TENSORBOARD_DIR = "tensorboard"
# Record keys that are per-epoch speeds and times, shown under "speed/" in TensorBoard.
_SPEED_KEYS = ("images_per_sec", "eval_images_per_sec", "data_wait_sec", "epoch_time_sec")


class Reporter:
  """Writes the run's records; only process 0 writes files or prints. Epoch lines on
  the console start with `label` (which of several runs it is; '' for one run)."""

  def __init__(self, workdir: str, label: str = ""):
    self.workdir, self.label = workdir, label
    self.is_main = jax.process_index() == 0
    self._writer = None

  @property
  def writer(self):
    """The TensorBoard writer, opened on first use (process 0 only)."""
    if self._writer is None:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._writer = tensorboardX.SummaryWriter(
          os.path.join(self.workdir, TENSORBOARD_DIR), flush_secs=30)
    return self._writer

  def write_config(self, config, evaluators=()) -> None:
    """config.json, and the config as TensorBoard hyperparameters and text; the
    scalars of `evaluators` are the metrics of TensorBoard's hyperparameter table."""
    if not self.is_main:
      return
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    _atomic_write(os.path.join(self.workdir, CONFIG_FILE), text + "\n")
    flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in _flatten(json.loads(text)).items()}
    # The hparams plugin's three summaries, into this writer's own file: tensorboardX's
    # add_hparams opens a second writer whose file, named by the same second and host,
    # replaced the first (the run had no hyperparameters in TensorBoard).
    metric_tags = ["train/loss", "train/accuracy",
                   *(_tag(key, ev.name) for ev in evaluators for key in ev.scalar_names())]
    from tensorboardX import summary as tb_summary  # pylint: disable=g-import-not-at-top
    for summary in tb_summary.hparams(flat, dict.fromkeys(metric_tags)):
      self.writer.file_writer.add_summary(summary)
    self.writer.add_text("config", "```\n" + text + "\n```")

  def write_dataset(self, info, channel_stats) -> None:
    """dataset.json: what prediction and export need without reading the dataset."""
    if not self.is_main:
      return
    mean, std = channel_stats or (None, None)
    _atomic_write(os.path.join(self.workdir, DATASET_FILE), json.dumps({
        "name": info.name, "image_shape": list(info.image_shape),
        "num_classes": info.num_classes, "class_names": list(info.class_names),
        "splits": info.splits,
        "channel_mean": None if mean is None else np.asarray(mean).tolist(),
        "channel_std": None if std is None else np.asarray(std).tolist()}, indent=2))

  def write_model(self, name: str, summary: dict) -> None:
    """model.json: the model's name, parameter count and forward FLOPs per image."""
    if self.is_main:
      _atomic_write(os.path.join(self.workdir, MODEL_FILE),
                    json.dumps({"model": name, **summary}, indent=2))

  def scalars(self, step: int, values: dict) -> None:
    """TensorBoard scalars of the training steps up to `step`."""
    if self.is_main:
      for k, v in values.items():
        self.writer.add_scalar(k.replace("train_", "train/", 1), v, step)

  def epoch(self, record: dict, details: dict | None = None) -> None:
    """Appends one epoch's record to metrics.jsonl (and its evaluations' details to
    evals/), writes its scalars to TensorBoard and prints it."""
    if not self.is_main:
      return
    for name, detail in (details or {}).items():
      path = os.path.join(self.workdir, EVALS_DIR, name, f"{record['step']}.json")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _atomic_write(path, json.dumps({"step": record["step"], **detail}))
      for key, value in record.items():
        if key.startswith(f"{name}_"):
          self.writer.add_scalar(_tag(key, name), value, record["step"])
    for key in _SPEED_KEYS:
      if key in record:
        self.writer.add_scalar(f"speed/{key}", record[key], record["step"])
    self.writer.flush()
    with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    evals = "".join(
        f"{name} loss {record[f'{name}_loss']:.4f} acc {record[f'{name}_accuracy']:.4f}  "
        for name in (details or {}) if f"{name}_loss" in record and
        f"{name}_accuracy" in record)
    print(f"{self.label}epoch {record['epoch']:3d}  step {record['step']:7d}  "
          f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
          f"{evals}{record['images_per_sec']:,.0f} img/s  "
          f"eval {record['eval_images_per_sec']:,.0f} img/s", flush=True)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()

  def info(self, message: str) -> None:
    if self.is_main:
      print(message, flush=True)

  def progress(self, total: int, initial: int, epoch: int):
    """A progress bar over an epoch's steps, on a terminal only."""
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="step",
                leave=False, disable=not (self.is_main and sys.stdout.isatty()))


def _tag(key: str, evaluator: str) -> str:
  """The TensorBoard tag of an evaluator's record key: 'test_top5_accuracy' ->
  'test/top5_accuracy'."""
  return f"{evaluator}/{key[len(evaluator) + 1:]}"


def model_line(summary: dict) -> str:
  """'347,146 parameters, 2.41 MFLOPs forward per image' from `models.summary`."""
  flops = summary["flops_per_image"]
  return (f"{summary['params']:,} parameters, " +
          ("forward FLOPs not reported by this backend" if flops is None else
           f"{flops / 1e6:,.2f} MFLOPs forward per image"))


def accuracy_summary(record: dict, evaluators) -> str:
  """'validation accuracy 0.9, loss 0.3; test accuracy ...' of a record."""
  return "; ".join(
      f"{ev.name} accuracy {record[f'{ev.name}_accuracy']:.4f}, "
      f"{ev.name} loss {record.get(f'{ev.name}_loss', float('nan')):.4f}"
      for ev in evaluators if f"{ev.name}_accuracy" in record)


def read_scalars(workdir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of a TensorBoard scalar of the run, by step (a step written again
  after a resume: its last value), read from the event files without TensorFlow
  (which TensorBoard's own readers import: 7 s)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  folder = os.path.join(workdir, TENSORBOARD_DIR)
  values = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # Records: length u64, its CRC u32, data, CRC u32.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      if pos + 16 + length > len(data):
        break  # A record still being written.
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 16 + length
      for value in event.summary.value:
        if value.tag == tag and value.HasField("simple_value"):
          values[event.step] = value.simple_value
  return sorted(values.items())


def read_json(workdir: str, name: str):
  """A JSON file of the workdir (config.json, dataset.json, ...)."""
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl, oldest first."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:  # Only the last line can be cut short by a crash.
        from cnn_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
        raise CheckpointError(f"{path} line {i + 1} is not a JSON record; repair or "
                              "remove that line.") from None
  return records


def truncate_metrics(workdir: str, after_step: int) -> None:
  """Drops records past `after_step` (written after the checkpoint a run resumes from)."""
  records = read_metrics(workdir)
  kept = [r for r in records if r["step"] <= after_step]
  path = os.path.join(workdir, METRICS_FILE)
  lines = 0
  if os.path.exists(path):
    with open(path) as f:
      lines = sum(1 for line in f if line.strip())  # A torn last line is rewritten away.
  if len(kept) != lines and jax.process_index() == 0:
    _atomic_write(os.path.join(workdir, METRICS_FILE),
                  "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
