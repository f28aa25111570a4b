"""End to end: the whole tutorial job, ours against the Keras tutorial script.

Each job is a fresh process, timed from its start to its exit, start-up included:
ours is `python -m cnn_jax.main train --config experiments/seed_cnn.py` into a new
temporary workdir; Keras's is `keras_e2e.py`, the tutorial's script. Both train the
tutorial network on the same training images for the same epochs at batch 32 and
evaluate on the whole test split after every epoch (ours: its `test` evaluator;
Keras: `validation_data`), with no other evaluation. Keras runs as the tutorial ships
it (float64 inputs from `/ 255.0`, `fit` defaults) and at its best settings (float32
inputs, the fastest steps_per_execution and jit_compile of the steady-state tuning at
batch 32, evaluation batches of the experiment's eval_batch_size, as ours). Runs are
interleaved: ours, Keras defaults, Keras best, then again.

Our jobs share a compilation cache of their own (cnn_jax/compile_cache.py), empty at
the start: one job of ours runs first on the empty cache, timed as the first run
ever of the tutorial on a machine (every program compiled); the repetitions then find
its programs there, as every later run of a user does.
"""

import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import method
from benchmarks import workers

BATCH_SIZE = 32
EVENT = "BENCH_EVENT "
# Keras at its best when no steady-state tuning ran (the measured best).
DEFAULT_BEST = {"steps_per_execution": 50, "jit_compile": False}


def dataset(data_dir: str | None, quick: bool) -> str:
  """fashion_mnist when prepared in `data_dir`, else synthetic_mnist (the same sizes,
  random), or for --quick the embedded mnist_5k. Made readable (ArrayRecord, decoded
  cache) here, before any timing, as `./run.sh prepare` leaves it."""
  from cnn_jax import prepare  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import source  # pylint: disable=g-import-not-at-top
  if quick:
    name = "mnist_5k"
  elif source.open_prepared("fashion_mnist", data_dir) is not None:
    name = "fashion_mnist"
  else:
    name = "synthetic_mnist"
  prepare.make_readable(name, data_dir)
  return name


def export_arrays(name: str, data_dir: str | None, path: str) -> None:
  """The dataset's train and test splits as one .npz of uint8 images and int labels,
  as the tutorial's `keras.datasets.*.load_data()` reads them from local files."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax import data  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import source  # pylint: disable=g-import-not-at-top
  builder = source.prepared_builder(name, data_dir)
  (x_train, y_train), (x_test, y_test) = (data.read_split(builder, s)
                                          for s in ("train", "test"))
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _timed(command: list[str], start_marker: str,
           env: dict | None = None) -> tuple[float, float, str]:
  """Runs `command` (with `env` added to the environment); (seconds to exit, seconds
  to the first output line holding `start_marker`, the whole output)."""
  env = {**workers.subprocess_env(), **(env or {})}  # Outside the timing.
  t0 = time.perf_counter()
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines, started = [], None
  for line in proc.stdout:
    if started is None and start_marker in line:
      started = time.perf_counter() - t0
    lines.append(line)
  proc.wait()
  seconds, output = time.perf_counter() - t0, "".join(lines)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {proc.returncode}):\n"
                       f"{output[-4000:]}")
  return seconds, started, output


def eval_batch_size() -> int:
  """The tutorial experiment's evaluation batch, both sides' (equal work)."""
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  return seed_cnn.get_config().eval_batch_size


def run_ours(name: str, data_dir: str | None, epochs: int, eval_batch: int,
             cache_dir: str) -> dict:
  with tempfile.TemporaryDirectory(prefix="cnn_jax_bench_") as workdir:
    seconds, started, out = _timed(
        [sys.executable, "-m", "cnn_jax.main", "train", "--config",
         os.path.join(workers.ROOT, "experiments", "seed_cnn.py"), "--workdir", workdir, f"--config.dataset={name}",
         f"--config.num_epochs={epochs}", f"--config.batch_size={BATCH_SIZE}",
         f"--config.eval_batch_size={eval_batch}",
         *([f"--config.data_dir={data_dir}"] if data_dir else [])],
        "data loaded in", {"JAX_COMPILATION_CACHE_DIR": cache_dir})
  accuracy = re.search(r"final test accuracy: ([0-9.]+)", out)
  loaded = re.search(r"data loaded in ([0-9.]+) s", out)
  rates = [(float(t.replace(",", "")), float(e.replace(",", ""))) for t, e in
           re.findall(r"([0-9,]+) img/s  eval ([0-9,]+) img/s", out)]
  return {"seconds": seconds, "startup_sec": started,
          "test_accuracy": float(accuracy.group(1)) if accuracy else None,
          "data_load_sec": float(loaded.group(1)) if loaded else None,
          # Each epoch's, as its line says: training, then evaluation.
          "train_images_per_sec": [t for t, _ in rates],
          "eval_images_per_sec": [e for _, e in rates]}


def run_keras(arrays: str, epochs: int, eval_batch: int, settings: dict | None) -> dict:
  """The tutorial script, as shipped (`settings` None) or with `settings`."""
  args = [sys.executable, "-m", "benchmarks.keras_e2e", "--data", arrays,
          "--epochs", str(epochs)]
  if settings:
    args += ["--float32", "--steps-per-execution", str(settings["steps_per_execution"]),
             "--jit-compile", str(settings["jit_compile"]),
             "--validation-batch-size", str(eval_batch)]
  seconds, started, out = _timed(args, EVENT + "fit")
  accuracy = re.search(EVENT + r"final test accuracy ([0-9.]+)", out)
  return {"seconds": seconds, "startup_sec": started,
          "test_accuracy": float(accuracy.group(1)) if accuracy else None}


def run(data_dir: str | None, epochs: int, reps: int, best: dict | None,
        quick: bool = False, log=print) -> dict:
  """Times ours on an empty compilation cache once, then ours, Keras as shipped and
  Keras at `best` settings, `reps` times each, interleaved; the ratio that counts is
  the fastest Keras job's seconds over ours' fastest (each side's best, as the cells
  compare), the medians' ratio beside it, and the first run's ratio too."""
  name, eval_batch = dataset(data_dir, quick), eval_batch_size()
  best = best or DEFAULT_BEST
  snap = method.LoadSnapshot.take()
  runs = {"ours": [], "keras_defaults": [], "keras_best": []}
  with tempfile.TemporaryDirectory(prefix="cnn_jax_bench_") as tmp:
    arrays, cache = os.path.join(tmp, f"{name}.npz"), os.path.join(tmp, "jax_cache")
    export_arrays(name, data_dir, arrays)
    first = run_ours(name, data_dir, epochs, eval_batch, cache)
    log(f"  end to end, ours on an empty compilation cache: {first['seconds']:.1f} s")
    for rep in range(reps):
      runs["ours"].append(run_ours(name, data_dir, epochs, eval_batch, cache))
      runs["keras_defaults"].append(run_keras(arrays, epochs, eval_batch, None))
      runs["keras_best"].append(run_keras(arrays, epochs, eval_batch, best))
      log(f"  end to end rep {rep + 1}/{reps}: " + ", ".join(
          f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items()))
  rows = {k: {"seconds": method.spread([r["seconds"] for r in v]), "runs": v}
          for k, v in runs.items()}
  fastest = min(("keras_defaults", "keras_best"),
                key=lambda k: rows[k]["seconds"]["median"])
  paired = [k["seconds"] / o["seconds"] for o, k in zip(runs["ours"], runs[fastest])]
  keras_min = min(rows[k]["seconds"]["min"] for k in ("keras_defaults", "keras_best"))
  return {"dataset": name, "epochs": epochs, "batch_size": BATCH_SIZE, "reps": reps,
          "eval_batch_size": eval_batch, "keras_best_settings": best, **rows,
          "ours_first_run": first, "ratio_first_run": keras_min / first["seconds"],
          "fastest_keras": fastest,
          "ratio": keras_min / rows["ours"]["seconds"]["min"],
          "ratio_median": rows[fastest]["seconds"]["median"]
                          / rows["ours"]["seconds"]["median"],
          "ratio_paired": method.spread(paired),
          "load": method.load_between(snap, method.LoadSnapshot.take())}
