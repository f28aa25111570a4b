"""`./run.sh report --workdir W [W ...] [--out DIR]`: figures and a comparison table.

For each run: curves.png (loss and accuracy per epoch: train and every evaluator),
confusion.png (the confusion matrix of the last test evaluation, with class names) and
misclassified.png (test images the selected checkpoint gets wrong, with true and
predicted labels and confidence). report.md compares the runs: validation and test
accuracy at the checkpoint each run's selection rule picks.
"""

import json
import os
import re

import numpy as np

from cnn_jax import report as report_lib
from cnn_jax import workdir as workdir_lib
from cnn_jax.errors import ConfigError

GRID = 5  # misclassified.png shows up to GRID x GRID images.


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def selected_record(workdir: str) -> tuple[dict, str]:
  """(the epoch record of the checkpoint the run selects, the rule), from its logs."""
  config = report_lib.read_json(workdir, report_lib.CONFIG_FILE)
  records = report_lib.read_metrics(workdir)
  if not records:
    raise ConfigError(f"{workdir} has no metrics.jsonl records: not a trained run.")
  metric = config.get("best_metric") or ""
  if metric and config.get("keep_best_checkpoints") and any(metric in r for r in records):
    sign = 1 if config.get("best_mode", "max") == "max" else -1
    best = max((r for r in records if metric in r), key=lambda r: sign * r[metric])
    return best, f"best {metric}"
  return records[-1], "latest"


def plot_curves(workdir: str, path: str, title: str | None = None) -> None:
  """Loss and accuracy against epochs: each evaluator's and train's per epoch
  (markers), and the training loss and accuracy of every dispatch from TensorBoard's
  events (a line), so that a run of one epoch is a curve too."""
  plt = _pyplot()
  records = report_lib.read_metrics(workdir)
  names = ["train"] + sorted({k[:-len("_accuracy")] for r in records for k in r
                              if k.endswith("_accuracy") and not k.startswith("train")
                              and not re.search(r"_top\d+_accuracy$", k)})
  steps_per_epoch = records[0]["step"] / records[0]["epoch"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, what in zip(axes, ("loss", "accuracy")):
    dispatches = report_lib.read_scalars(workdir, f"train/{what}")
    if dispatches:
      steps, values = zip(*dispatches)
      ax.plot(np.asarray(steps) / steps_per_epoch, values, color="C0", alpha=0.4,
              linewidth=1, label="train (each dispatch)")
    for i, name in enumerate(names):
      points = [(r["epoch"], r[f"{name}_{what}"]) for r in records if f"{name}_{what}" in r]
      if points:
        ax.plot(*zip(*points), marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(what)
    ax.set_xlim(0, max(r["epoch"] for r in records) * 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title or os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def last_evaluation(workdir: str, name: str = "test") -> dict | None:
  """The newest evals/<name>/<step>.json of a run, or None."""
  directory = os.path.join(workdir, report_lib.EVALS_DIR, name)
  if not os.path.isdir(directory):
    return None
  steps = sorted(int(f[:-5]) for f in os.listdir(directory) if f.endswith(".json"))
  if not steps:
    return None
  with open(os.path.join(directory, f"{steps[-1]}.json")) as f:
    return json.load(f)


def plot_confusion(evaluation: dict, path: str) -> None:
  plt = _pyplot()
  matrix = np.asarray(evaluation["confusion"])
  names = evaluation["class_names"]
  size = max(5, 0.55 * len(names))
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(matrix, cmap="Blues")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if len(names) <= 20:
    for (i, j), v in np.ndenumerate(matrix):
      ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
              color="white" if v > matrix.max() / 2 else "black")
  fig.colorbar(image, ax=ax)
  ax.set_title(f"confusion matrix, step {evaluation['step']} ({evaluation['count']} images)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def misclassified(workdir: str, step: int, limit: int = GRID * GRID):
  """Up to `limit` test images checkpoint `step` gets wrong: (image, true, predicted,
  confidence), in split order; also the number wrong and the number seen."""
  from cnn_jax import data, inference, run  # pylint: disable=g-import-not-at-top
  predictor = inference.load(workdir, str(step))
  config = run.load_config(workdir)
  builder = data.source.prepared_builder(config.dataset, config.data_dir,
                                         data.folder_options(config))
  images, labels = data.read_split(builder, config.test_split)
  wrong, found = 0, []
  for start in range(0, len(labels), 1000):
    probs = predictor.probabilities(images[start:start + 1000])
    predicted = probs.argmax(-1)
    for i in np.nonzero(predicted != labels[start:start + 1000])[0]:
      wrong += 1
      if len(found) < limit:
        found.append((images[start + i], predictor.class_names[labels[start + i]],
                      predictor.class_names[predicted[i]], float(probs[i].max())))
  return found, wrong, len(labels)


def plot_misclassified(found, wrong: int, total: int, path: str) -> None:
  plt = _pyplot()
  fig, axes = plt.subplots(GRID, GRID, figsize=(2 * GRID, 2.2 * GRID))
  for ax, item in zip(axes.ravel(), found + [None] * (GRID * GRID - len(found))):
    ax.axis("off")
    if item is None:
      continue
    image, true, predicted, confidence = item
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    ax.set_title(f"true {true}\npred {predicted} ({confidence:.2f})", fontsize=8)
  fig.suptitle(f"{wrong} of {total} test images misclassified (first {len(found)} shown)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run_labels(workdirs) -> list[str]:
  """The shortest path ends that tell the runs apart: 'seed0' for one run,
  'lr=0.001/seed0' and 'lr=0.0003/seed0' for two of a sweep."""
  parts = [os.path.normpath(w).split(os.sep) for w in workdirs]
  for n in range(1, max(map(len, parts)) + 1):
    labels = ["/".join(p[-n:]) for p in parts]
    if len(set(labels)) == len(labels):
      return labels
  raise ConfigError(f"report: a run is given twice: {', '.join(workdirs)}.")


def check_runs(workdirs) -> None:
  """Refuses, before anything is written, a folder that is not a trained run
  (`workdir.not_a_run`: no such path, a file, a sweep's folder of runs) or one that
  has not finished an epoch."""
  for workdir in workdirs:
    problem = workdir_lib.not_a_run(workdir)
    if problem:
      raise ConfigError(f"report: {problem}" + (
          f" (several: ./run.sh report {os.path.join(workdir, '*', '*')})"
          if "it holds" in problem else ""))
    if not report_lib.read_metrics(workdir):
      raise ConfigError(f"report: {workdir} has no epoch records yet (metrics.jsonl): "
                        "it has not finished an epoch.")


def report_command(workdirs, out_dir: str | None = None) -> str:
  """Writes the figures of each run and report.md into `out_dir`; returns its path."""
  if not workdirs:
    raise ConfigError("report needs --workdir W [W ...].")
  workdirs = [os.path.abspath(w) for w in workdirs]
  check_runs(workdirs)
  labels = run_labels(workdirs)
  out_dir = os.path.abspath(out_dir or os.path.join(workdirs[0], "report"))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConfigError(f"report: --out {out_dir} is a file; give a directory for the "
                      "figures.")
  os.makedirs(out_dir, exist_ok=True)
  rows = ["| run | model | dataset | epochs | selection | step | validation accuracy | "
          "test accuracy |", "|---|---|---|---|---|---|---|---|"]
  for workdir, label in zip(workdirs, labels):
    prefix = os.path.join(out_dir, label.replace("/", "_") + "_" if len(workdirs) > 1
                          else "")
    record, rule = selected_record(workdir)
    config = report_lib.read_json(workdir, report_lib.CONFIG_FILE)
    plot_curves(workdir, prefix + "curves.png", label)
    evaluation = last_evaluation(workdir)
    if evaluation and "confusion" in evaluation:
      plot_confusion(evaluation, prefix + "confusion.png")
    plot_misclassified(*misclassified(workdir, record["step"]), prefix + "misclassified.png")
    fmt = lambda k: f"{record[k]:.4f}" if k in record else "-"
    rows.append(f"| {label} | {config['model']} | {config['dataset']} | {record['epoch']} "
                f"| {rule} | {record['step']} | {fmt('validation_accuracy')} | "
                f"{fmt('test_accuracy')} |")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(rows) + "\n")
  print("\n".join(rows))
  print(f"wrote the figures and report.md to {out_dir}")
  return out_dir
