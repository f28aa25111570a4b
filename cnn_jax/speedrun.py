"""Time to accuracy: `./run.sh speedrun`.

Trains a recipe (experiments/speedrun_fashion_mnist.py unless --config says another)
once per seed, each in a process of its own, timed from that process's start to the
record of its final test accuracy: start-up (imports, data, initialisation, and the
checkpoint saves between epochs), compilation, training and evaluation, the last two
without the compilation inside them (the runner's epoch records hold each part:
cnn_jax/run.py). `--epochs 4,6,8` gives the time/accuracy curve: each length a
complete run of its own, with its own schedule, never a look at the test split part
way through a longer run.

Each speedrun writes into a new folder `WORKDIR/<time>/`: a run per length and seed
(`epochs6/seed0/`), and `speedrun.json`, `speedrun.md` (the table) and `speedrun.png`
(test accuracy against seconds from process start, each seed a point, each length
its mean with a bar of one standard deviation).
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from cnn_jax import report as report_lib
from cnn_jax.errors import ConfigError

DEFAULT_SEEDS = 5
# The record key a speedrun reports: the recipe's evaluator named "test" on the test
# split (with the recipe's test-time augmentation and weight averaging).
METRIC = "test_accuracy"
# The parts of a run's time, in the order they are printed.
PHASES = ("startup_sec", "compile_sec", "train_sec", "eval_sec")


def phases(records: list[dict], spawned_unix: float) -> dict:
  """A run's time from process start (`spawned_unix`, on the wall clock) to its last
  epoch record, and its parts, from the runner's epoch `records`."""
  total = records[-1]["time_unix"] - spawned_unix
  sums = {k: sum(r[k] for r in records) for k in (
      "train_time_sec", "train_compile_sec", "eval_time_sec", "eval_compile_sec")}
  looped = sums["train_time_sec"] + sums["eval_time_sec"]
  return {"seconds": total,
          "startup_sec": total - looped,
          "compile_sec": sums["train_compile_sec"] + sums["eval_compile_sec"],
          "train_sec": sums["train_time_sec"] - sums["train_compile_sec"],
          "eval_sec": sums["eval_time_sec"] - sums["eval_compile_sec"]}


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  return (statistics.mean(values),
          statistics.stdev(values) if len(values) > 1 else 0.0)


def run_one(config: str, workdir: str, seed: int, epochs: int, overrides: list[str],
            label: str, env: dict | None = None) -> dict:
  """Trains one seed for `epochs` in a new process (with `env` added to its
  environment); its accuracy and time parts."""
  command = [sys.executable, "-m", "cnn_jax.main", "train", "--config", config,
             "--workdir", workdir, f"--config.seed={seed}",
             f"--config.num_epochs={epochs}", *overrides]
  spawned = time.time()
  proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, env={**os.environ, **(env or {})})
  exited = time.time() - spawned
  if proc.returncode:
    raise RuntimeError(f"{label}: the run failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-4000:]}")
  records = report_lib.read_metrics(workdir)
  return {"seed": seed, "epochs": epochs, "workdir": workdir,
          "test_accuracy": records[-1][METRIC], "exit_sec": exited,
          **phases(records, spawned)}


def summarize(runs: list[dict]) -> dict:
  """Mean and standard deviation of accuracy and each time, over `runs` (one length)."""
  keys = ("test_accuracy", "seconds", *PHASES)
  return {k: dict(zip(("mean", "std"), mean_std([r[k] for r in runs]))) for k in keys}


def run_line(label: str, r: dict) -> str:
  return (f"{label}test accuracy {r['test_accuracy']:.4f} in {r['seconds']:.1f} s from "
          "process start: " + ", ".join(
              f"{p[:-4]} {r[p]:.1f} s" for p in PHASES))


def table(summaries: dict[int, dict], seeds: int) -> str:
  """The markdown table of each training length's means and spreads."""
  lines = [f"| epochs | test accuracy (mean ± std, {seeds} seeds) | seconds from process "
           "start | start-up | compile | training | evaluation |",
           "|---|---|---|---|---|---|---|"]
  for epochs, s in sorted(summaries.items()):
    acc, sec = s["test_accuracy"], s["seconds"]
    lines.append(f"| {epochs} | {acc['mean']:.4f} ± {acc['std']:.4f} | "
                 f"{sec['mean']:.1f} ± {sec['std']:.1f} | " + " | ".join(
                     f"{s[p]['mean']:.1f}" for p in PHASES) + " |")
  return "\n".join(lines)


def plot(runs: list[dict], summaries: dict[int, dict], path: str, title: str) -> None:
  """Test accuracy against seconds from process start: each run a point, each length
  its mean with error bars of one standard deviation."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.scatter([r["seconds"] for r in runs], [r["test_accuracy"] for r in runs],
             s=12, alpha=0.5, label="one seed")
  order = sorted(summaries)
  ax.errorbar([summaries[e]["seconds"]["mean"] for e in order],
              [summaries[e]["test_accuracy"]["mean"] for e in order],
              xerr=[summaries[e]["seconds"]["std"] for e in order],
              yerr=[summaries[e]["test_accuracy"]["std"] for e in order],
              fmt="o-", capsize=3, label="mean ± std")
  for e in order:
    ax.annotate(f"{e} ep", (summaries[e]["seconds"]["mean"],
                            summaries[e]["test_accuracy"]["mean"]),
                textcoords="offset points", xytext=(4, -10), fontsize=8)
  ax.set_xlabel("seconds from process start to the final test accuracy")
  ax.set_ylabel("test accuracy")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_epochs(text: list[str]) -> list[int]:
  """--epochs 4,6,8 as [4, 6, 8]."""
  try:
    values = [int(t) for t in text]
  except ValueError:
    values = []
  if not values or min(values) < 1 or len(set(values)) != len(values):
    raise ConfigError(f"--epochs {','.join(text)}: give distinct whole numbers >= 1, "
                      "e.g. --epochs 4,6,8.")
  return values


def check(config, seeds: int) -> None:
  """Refuses, before any work, a recipe whose final test accuracy has no one key."""
  if seeds < 1:
    raise ConfigError(f"--seeds {seeds}: a speedrun needs at least one seed.")
  test = config.evals.get("test")
  if test is None or test.get("split") != "test":
    raise ConfigError("a speedrun reports the evaluator named 'test' on the test split: "
                      "the recipe needs config.evals.test = dict(split='test', ...).")
  if config.ema_decay and not test.get("ema"):
    raise ConfigError("the recipe keeps a moving average of the weights "
                      "(config.ema_decay) but its 'test' evaluator reads the raw ones: "
                      "set config.evals.test.ema=True, or ema_decay=0.")


def speedrun(config_path: str, workdir: str, seeds: int, lengths: list[int],
             overrides: list[str], log=print) -> dict:
  """Runs the recipe `seeds` times at each training length (`lengths`, in epochs);
  writes and returns the results (see the module's docstring)."""
  config_path = os.path.abspath(config_path)
  out = os.path.join(os.path.abspath(workdir),
                     datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  if os.path.exists(out):
    raise ConfigError(f"{out} exists already; wait a second and run again.")
  os.makedirs(out)
  log(f"speedrun of {os.path.relpath(config_path)}: {seeds} seed(s) at "
      f"{', '.join(map(str, lengths))} epoch(s), one process each; runs in {out}")
  runs = []
  for e in lengths:
    for seed in range(seeds):
      label = f"[{e} epochs seed{seed}] "
      r = run_one(config_path, os.path.join(out, f"epochs{e}", f"seed{seed}"), seed, e,
                  overrides, label)
      runs.append(r)
      log(run_line(label, r))
  summaries = {e: summarize([r for r in runs if r["epochs"] == e]) for e in lengths}
  for e in lengths:
    s = summaries[e]
    log(f"{e} epochs, {seeds} seed(s): test accuracy {s['test_accuracy']['mean']:.4f} ± "
        f"{s['test_accuracy']['std']:.4f} in {s['seconds']['mean']:.1f} ± "
        f"{s['seconds']['std']:.1f} s from process start (" + ", ".join(
            f"{p[:-4]} {s[p]['mean']:.1f}" for p in PHASES) + ")")
  result = {"config": config_path, "overrides": overrides, "seeds": seeds,
            "runs": runs,
            "summaries": {str(e): s for e, s in summaries.items()}}
  with open(os.path.join(out, "speedrun.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, "speedrun.md"), "w") as f:
    f.write(table(summaries, seeds) + "\n")
  plot(runs, summaries, os.path.join(out, "speedrun.png"),
       f"{os.path.basename(config_path)}: {seeds} seed(s) per length")
  log(table(summaries, seeds))
  log(f"wrote {out}/speedrun.json, speedrun.md, speedrun.png")
  return result
