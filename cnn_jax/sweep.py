"""`./run.sh sweep --config E --workdir D --sweep FIELD=V1,V2 [...] --seeds N`.

Runs every setting of the grid (the product of the `--sweep` values) with N seeds
(config.seed, config.seed + 1, ...), each in its own workdir `D/<setting>/seed<k>`:
a finished run is not redone, an interrupted one resumes. With `--vmap_seeds`, the
seeds of a setting train at once, in one program (cnn_jax/seeds.py), each still a run
of its own. Each run is read at the checkpoint its selection rule picks (its best
validation checkpoint), and the settings are compared on the mean validation metric;
test metrics are reported, never used to choose. Writes D/sweep.md (mean and standard
deviation per setting) and D/sweep.json. With `--report_only`, nothing is trained:
the table is written from the runs as they stand (a sweep in progress, or one cut
short), unfinished runs marked with their epochs and never chosen.
"""

import itertools
import json
import os

import jax
import numpy as np

from cnn_jax import configs
from cnn_jax import plots
from cnn_jax import report as report_lib
from cnn_jax import run
from cnn_jax import seeds as seeds_lib
from cnn_jax.errors import ConfigError


def parse_grid(specs: list[str], config) -> dict[str, list]:
  """{field: [values]} from 'field=v1,v2' strings, values of the field's type."""
  grid = {}
  for spec in specs or []:
    field, sep, values = spec.partition("=")
    if not sep or not values or field not in config:
      raise ConfigError(f"--sweep {spec!r}: expected FIELD=V1,V2,... with a field of the "
                        "config, e.g. --sweep learning_rate=1e-3,3e-4.")
    kind = type(config[field])
    cast = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
    if field in grid:
      raise ConfigError(f"--sweep {field}= is given twice; list its values in one: "
                        f"--sweep {field}=V1,V2,...")
    try:
      grid[field] = [cast(v) for v in values.split(",")]
    except ValueError as e:
      raise ConfigError(f"--sweep {spec!r}: {e}") from e
    twice = sorted({str(v) for v in grid[field] if grid[field].count(v) > 1})
    if twice:
      raise ConfigError(f"--sweep {spec!r} lists {', '.join(twice)} more than once: each "
                        "setting is one run per seed.")
  return grid


def settings(grid: dict[str, list]) -> list[dict]:
  """Every combination of the grid's values (one empty setting for an empty grid)."""
  return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def setting_name(setting: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in setting.items()) or "base"


def sweep(config, workdir: str, grid: dict[str, list], seeds: int,
          vmap_seeds: bool = False, train: bool = True) -> list[dict]:
  """Runs the sweep (see the module docstring); returns a row per setting.

  `vmap_seeds`: train the unfinished seeds of each setting in one program
  (`seeds.train_seeds`; in-memory data only) instead of one after another.
  `train=False`: train nothing; report the runs that have records, as they stand.
  """
  metric = config.best_metric
  if not metric:
    raise ConfigError("A sweep chooses on a validation metric: give the config a "
                      "validation split and --config.best_metric=validation_accuracy "
                      "(with --config.keep_best_checkpoints=1).")
  if seeds < 1:
    raise ConfigError(f"--seeds={seeds}: run at least one seed.")
  setting_configs = []
  for setting in settings(grid):  # Every setting checked before any trains.
    setting_config = config.copy_and_resolve_references()
    with setting_config.unlocked():
      for field, value in setting.items():
        setting_config[field] = value
    try:
      configs.check(setting_config, jax.device_count(), jax.process_count())
    except ConfigError as e:
      raise ConfigError(f"setting {setting_name(setting)} of the sweep: {e}") from e
    setting_configs.append(setting_config)
  rows = []
  for setting, setting_config in zip(settings(grid), setting_configs):
    run_dirs = [os.path.join(workdir, setting_name(setting), f"seed{k}")
                for k in range(seeds)]
    epochs = [_last_epoch(d) for d in run_dirs]  # 0: a seed not started.
    pending = [k for k in range(seeds) if epochs[k] < setting_config.num_epochs]
    if not train:
      started = [d for d, epoch in zip(run_dirs, epochs) if epoch]
      if started:
        records = [plots.selected_record(d)[0] for d in started]
        rows.append(summarize(setting, records, metric, epochs,
                              setting_config.num_epochs))
      continue
    labels = [f"[{setting_name(setting)} seed{k}] " for k in range(seeds)]
    if vmap_seeds and len(pending) > 1:
      seeds_lib.train_seeds(setting_config, [config.seed + k for k in pending],
                            [run_dirs[k] for k in pending], [labels[k] for k in pending])
    else:
      for k in pending:
        run.train_and_evaluate(seeds_lib.seed_config(setting_config, config.seed + k),
                               run_dirs[k], labels[k])
    records = [plots.selected_record(run_dir)[0] for run_dir in run_dirs]
    rows.append(summarize(setting, records, metric))
  if not rows:
    raise ConfigError(f"No run of this sweep in {workdir} has records yet: nothing to "
                      "report.")
  finished = [r for r in rows if r["finished"]]
  best = max(finished, key=lambda r: r[metric]["mean"] if config.best_mode == "max"
             else -r[metric]["mean"]) if finished else None
  for row in rows:
    row["chosen"] = row is best
  write(workdir, rows, metric)
  return rows


def _last_epoch(run_dir: str) -> int:
  """The last epoch `run_dir` logged (0: none)."""
  done = report_lib.read_metrics(run_dir) if os.path.isdir(run_dir) else []
  return done[-1]["epoch"] if done else 0


def summarize(setting: dict, records: list[dict], metric: str,
              epochs: list[int] | None = None, num_epochs: int | None = None) -> dict:
  """Mean and standard deviation (ddof=1 over seeds; 0 for one seed) of each
  validation and test metric of the selected records; `epochs` (the last epoch of
  each seed's run, 0 for one not started) below `num_epochs` make the row
  unfinished."""
  row = {"setting": setting, "seeds": len(records), "steps": [r["step"] for r in records],
         "finished": not epochs or min(epochs) >= num_epochs}
  if not row["finished"]:
    row["epochs"], row["num_epochs"] = epochs, num_epochs
  keys = sorted({k for r in records for k in r
                 if k.startswith(("validation_", "test_")) and isinstance(r[k], float)})
  for k in keys:
    values = np.array([r[k] for r in records if k in r], np.float64)
    row[k] = {"mean": float(values.mean()),
              "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              "values": values.tolist()}
  if metric not in row:
    raise ConfigError(f"The runs of setting {setting_name(setting)} log no {metric!r}.")
  return row


def write(workdir: str, rows: list[dict], metric: str) -> None:
  columns = [metric, *[k for k in ("validation_accuracy", "test_accuracy", "test_loss")
                       if k != metric and k in rows[0]]]
  lines = [f"Selection: each run's best checkpoint by {metric}; settings compared on its "
           "mean over seeds. Test metrics are reported, not used to choose.", "",
           "| setting | seeds | " + " | ".join(columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for row in rows:
    cells = [f"{row[c]['mean']:.4f} ± {row[c]['std']:.4f}" for c in columns]
    name = setting_name(row["setting"]) + (" (chosen)" if row["chosen"] else "")
    if not row["finished"]:
      name += (f" (unfinished: epochs {'/'.join(map(str, row['epochs']))} of "
               f"{row['num_epochs']})")
    lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells) + " |")
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print("\n".join(lines))
