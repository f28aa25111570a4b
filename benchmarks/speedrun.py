"""Time to accuracy against Keras: `./run.sh bench --speedrun`.

The speedrun recipe (experiments/speedrun_fashion_mnist.py) trained by ours, each seed
a process of its own (cnn_jax/speedrun.py, as `./run.sh speedrun` runs it), and the
same recipe in Keras (keras_speedrun.py), each seed a process too, both timed from
process start to the final test accuracy, interleaved seed by seed (ours, Keras, ours,
...). Keras runs at its best settings, chosen by the bench's method: its defaults and
each steps_per_execution without XLA, then XLA at the fastest of them, one
steady-state measurement each of the recipe's network at the recipe's batch
(peers.py), the fastest kept. Our runs share a compilation cache of their own, empty
at the start: the first seed compiles every program, the others load them, as a
user's second run does (each run's compile seconds are in the JSON).

The ratio is Keras's mean seconds over ours (and per seed, paired); each side's mean
test accuracy beside it, since the claim is the time to the same accuracy.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import e2e
from benchmarks import method
from benchmarks import plan
from benchmarks import workers

# The Keras settings tried (plan.keras_configs): steps_per_execution values dividing
# the tuning window.
WINDOW_STEPS, STEPS_PER_EXECUTION = 30, (1, 10, 30)


def keras_recipe(config) -> dict:
  """The fields of our recipe that its Keras twin follows; refuses a recipe the twin
  cannot follow (it writes Adam on a warm-up cosine schedule, as the speedrun's)."""
  if (config.optimizer, config.lr_schedule) != ("adam", "cosine") or (
      config.crop_padding or config.mixup_alpha or config.cutmix_alpha or
      config.weight_decay or config.normalize or config.grad_accum_steps != 1):
    raise SystemExit("--speedrun: the Keras twin follows Adam on a cosine schedule with "
                     "flips, label smoothing, a moving average and flip TTA only; this "
                     "recipe asks for more.")
  return {"model": config.model, "model_kwargs": config.model_kwargs.to_dict(),
          "batch_size": config.batch_size, "learning_rate": config.learning_rate,
          "warmup_epochs": config.warmup_epochs, "label_smoothing": config.label_smoothing,
          "flip": config.flip, "ema_decay": config.ema_decay,
          "tta": config.evals.test.get("tta", "none"),
          "eval_batch_size": config.eval_batch_size}


def cell(recipe: dict, experiment: str = "speedrun_fashion_mnist") -> plan.Cell:
  """The recipe's network at its batch as a bench cell (Keras's tuning; --profile)."""
  return plan.Cell(recipe["model"], recipe["batch_size"], (28, 28, 1), experiment,
                   WINDOW_STEPS, 3, STEPS_PER_EXECUTION,
                   model_kwargs=recipe["model_kwargs"])


def tune_keras(recipe: dict, tolerance: float, max_windows: int, log) -> dict:
  """Keras's fastest settings for the recipe's network at its batch (steady state)."""
  tuning, network = [], cell(recipe)
  with workers.Worker("keras", network.spec(tolerance, max_windows)) as peer:
    for config in plan.keras_configs(network):
      tuning.append({"config": config, **peer.request(**config)})
      log(f"  Keras {plan.config_name(config)}: "
          f"{tuning[-1]['images_per_sec']:,.0f} img/s (tuning)")
    best = max(tuning, key=lambda t: t["images_per_sec"])
    config = plan.xla_config(best["config"]["steps_per_execution"])
    tuning.append({"config": config, **peer.request(**config)})
    log(f"  Keras {plan.config_name(config)}: "
        f"{tuning[-1]['images_per_sec']:,.0f} img/s (tuning)")
  best = max(tuning, key=lambda t: t["images_per_sec"])
  return {"best": best["config"], "tuning": tuning}


def run_keras(arrays: str, recipe: dict, seed: int, epochs: int, settings: dict) -> dict:
  """One Keras seed in a new process, timed as ours (speedrun.phases)."""
  command = [sys.executable, "-m", "benchmarks.keras_speedrun", "--data", arrays,
             "--recipe", json.dumps(recipe), "--seed", str(seed), "--epochs", str(epochs),
             "--steps-per-execution", str(settings["steps_per_execution"]),
             "--jit-compile", str(settings["jit_compile"])]
  env = workers.subprocess_env()
  spawned = time.time()
  proc = subprocess.run(command, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
  if proc.returncode:
    raise RuntimeError(f"Keras seed {seed} failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-4000:]}")
  line = next(l for l in proc.stdout.splitlines() if l.startswith(e2e.EVENT))
  t = json.loads(line[len(e2e.EVENT):])
  return {"seed": seed, "epochs": epochs, "test_accuracy": t["test_accuracy"],
          "seconds": t["eval_end_unix"] - spawned,
          "startup_sec": t["fit_start_unix"] - spawned,
          # Keras compiles inside fit: its compilation is in its training time.
          "compile_sec": None, "train_sec": t["fit_end_unix"] - t["fit_start_unix"],
          "eval_sec": t["eval_end_unix"] - t["fit_end_unix"],
          "parameters": t["parameters"]}


def config_path(path: str | None) -> str:
  return os.path.abspath(path) if path else os.path.join(
      workers.ROOT, "experiments", "speedrun_fashion_mnist.py")


def load_recipe(path: str | None):
  """The recipe's config (--config, default experiments/speedrun_fashion_mnist.py)."""
  import runpy  # pylint: disable=g-import-not-at-top
  return runpy.run_path(config_path(path))["get_config"]()


def run(path: str | None, seeds: int, epochs: int | None, data_dir: str | None,
        tolerance: float, max_windows: int, log=print) -> dict:
  """Tunes Keras, then runs both sides `seeds` times, interleaved; see the module."""
  from cnn_jax import speedrun  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import source  # pylint: disable=g-import-not-at-top
  config, path = load_recipe(path), config_path(path)
  speedrun.check(config, seeds)
  epochs = epochs or config.num_epochs
  recipe = keras_recipe(config)
  if source.open_prepared(config.dataset, data_dir) is None:
    raise SystemExit(f"--speedrun needs {config.dataset} prepared (./run.sh prepare "
                     f"{config.dataset} --from DIR; Debian: dataset-fashion-mnist).")
  snap = method.LoadSnapshot.take()
  t0 = time.perf_counter()
  log(f"speedrun: {config.dataset}, {epochs} epochs, {seeds} seeds; tuning Keras")
  keras = tune_keras(recipe, tolerance, max_windows, log)
  runs = {"ours": [], "keras": []}
  overrides = [f"--config.data_dir={data_dir}"] if data_dir else []
  with tempfile.TemporaryDirectory(prefix="cnn_jax_speedrun_") as tmp:
    arrays = os.path.join(tmp, f"{config.dataset}.npz")
    e2e.export_arrays(config.dataset, data_dir, arrays)
    # Our runs inherit it: a cache of their own, empty at the start.
    cache = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache")}
    for seed in range(seeds):
      runs["ours"].append(speedrun.run_one(
          path, os.path.join(tmp, f"seed{seed}"), seed, epochs, overrides,
          f"[ours seed{seed}] ", env=cache))
      log(speedrun.run_line(f"  ours  seed {seed}: ", runs["ours"][-1]))
      runs["keras"].append(run_keras(arrays, recipe, seed, epochs, keras["best"]))
      r = runs["keras"][-1]
      log(f"  Keras seed {seed}: test accuracy {r['test_accuracy']:.4f} in "
          f"{r['seconds']:.1f} s from process start: startup {r['startup_sec']:.1f} s, "
          f"fit (compile inside) {r['train_sec']:.1f} s, eval {r['eval_sec']:.1f} s")
  summary = {k: {m: dict(zip(("mean", "std"), speedrun.mean_std([r[m] for r in v])))
                 for m in ("test_accuracy", "seconds")} for k, v in runs.items()}
  paired = [k["seconds"] / o["seconds"] for o, k in zip(runs["ours"], runs["keras"])]
  return {"config": os.path.relpath(path, workers.ROOT), "dataset": config.dataset,
          "epochs": epochs, "seeds": seeds, "recipe": recipe, "keras_tuning": keras,
          "runs": runs, "summary": summary,
          "ratio": summary["keras"]["seconds"]["mean"] / summary["ours"]["seconds"]["mean"],
          "ratio_paired": method.spread(paired),
          "load": method.load_between(snap, method.LoadSnapshot.take()),
          "total_sec": time.perf_counter() - t0}


def markdown(result: dict) -> str:
  """The bench's speedrun table."""
  s = result["summary"]
  lines = [f"Speedrun: {result['config']}, {result['epochs']} epochs, {result['seeds']} "
           "seeds, each a process timed from its start to the final test accuracy "
           f"(Keras at {plan.config_name(result['keras_tuning']['best'])}):", "",
           "| side | test accuracy (mean ± std) | seconds (mean ± std) | per seed, s |",
           "|---|---|---|---|"]
  for side in ("ours", "keras"):
    acc, sec = s[side]["test_accuracy"], s[side]["seconds"]
    lines.append(f"| {side} | {acc['mean']:.4f} ± {acc['std']:.4f} | {sec['mean']:.1f} ± "
                 f"{sec['std']:.1f} | " + ", ".join(
                     f"{r['seconds']:.1f}" for r in result["runs"][side]) + " |")
  p = result["ratio_paired"]
  lines += ["", f"Keras / ours, seconds to the final accuracy: {result['ratio']:.2f}x "
            f"(paired per seed {p['min']:.2f}-{p['max']:.2f}x)"]
  return "\n".join(lines)
