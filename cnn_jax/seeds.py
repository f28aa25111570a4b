"""Several seeds of one config trained at once, in one program.

`train_seeds(config, seeds, workdirs)` trains seed `seeds[i]` of `config` in
`workdirs[i]`, each a complete run of its own (checkpoints, metrics.jsonl, evaluations,
config.json with its seed), as `run.train_and_evaluate` would write it. The runs at the
same step train together: their states are stacked and one compiled program runs
`jax.vmap` of `train.train_steps` over (state, batch rows), gathering every seed's
batches, in its own seed's order, from one copy of the training split on the devices.
The data is loaded, and the program compiled, once for all of them. A small model
leaves an accelerator mostly idle one seed at a time; together the seeds keep it busy.
On a small CPU, where one seed's step already keeps the cores busy, the gain is only
the start-up of the runs saved (README, "Seeds and sweeps": measured on 2 cores).

Each seed's results are those of its own run, to float rounding: the same initial
parameters (the same init key), the same batches in the same order, the same steps;
mapped, XLA may order the sums of a matmul or convolution differently.

A run that stops (a signal, a crash) resumes from its checkpoints as any run does:
`train_seeds` again (the seeds at the same step go on together, the others by
themselves), or `./run.sh train` on one of its workdirs. In-memory data only.
"""

import contextlib
import dataclasses
import os

import jax

from cnn_jax import configs
from cnn_jax import mesh as mesh_lib
from cnn_jax import preemption
from cnn_jax import report as report_lib
from cnn_jax import run
from cnn_jax import workdir as workdir_lib
from cnn_jax.errors import ConfigError


def seed_config(config, seed: int):
  """`config` with `seed`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def train_seeds(config, seeds: list[int], workdirs: list[str],
                labels: list[str] | None = None) -> list[dict]:
  """Trains seed `seeds[i]` of `config` in `workdirs[i]` (see the module docstring);
  returns each run's last epoch record. `labels[i]` starts run i's console lines
  (default 'seed S: ').

  Raises:
    ConfigError: the data is not in memory, or several processes run the job.
    preemption.Preempted: a signal stopped the runs after they saved checkpoints.
  """
  if len(seeds) != len(workdirs) or len(set(seeds)) != len(seeds):
    raise ValueError(f"One workdir per seed, seeds distinct: {seeds}, {workdirs}.")
  configs.check(config, jax.device_count(), jax.process_count())
  if jax.process_count() > 1:
    raise ConfigError("Seeds in one program run in a single process; run the seeds "
                      "one by one on several processes.")
  if config.input_pipeline == "streaming":
    raise ConfigError("Seeds in one program share one in-memory copy of the data; use "
                      "--config.input_pipeline=in_memory (or auto), or train them one "
                      "by one.")
  workdirs = [os.path.abspath(w) for w in workdirs]
  runs_configs = [seed_config(config, s) for s in seeds]
  labels = labels or [f"seed {s}: " for s in seeds]
  reporters = [run.open_workdir(w, label) for label, w in zip(labels, workdirs)]
  with contextlib.ExitStack() as exits:
    for workdir, reporter in zip(workdirs, reporters):
      exits.callback(reporter.close)
      exits.enter_context(workdir_lib.locked(workdir, reporter.info))
    stop = exits.enter_context(preemption.stop_on_signals())
    exp = run.build_experiment(runs_configs[0])
    if exp.data.pipeline != "in_memory":
      raise ConfigError(
          f"Seeds in one program share one in-memory copy of the data, but the "
          f"training split is larger than in_memory_max_bytes="
          f"{config.in_memory_max_bytes} and is streamed; raise it, or train the seeds "
          "one by one.")
    runs, starts = [], []
    for cfg, workdir, reporter in zip(runs_configs, workdirs, reporters):
      ckpts = run.open_checkpoints(cfg, workdir)
      exits.callback(ckpts.close)
      # The same arrays on the devices, in this seed's order.
      data = dataclasses.replace(exp.data, data_key=run.root_keys(cfg.seed)["data"])
      this = run.Run(cfg, workdir, reporter, ckpts, run.fingerprint(cfg, exp.data.info),
                     data)
      runs.append(this)
      starts.append(run.resume(exp, this, exp.state))
    exp.state = None  # Only a target.
    groups = {}
    for k, (_, _, step) in enumerate(starts):
      groups.setdefault(step, []).append(k)
    records = [None] * len(runs)
    for _, members in sorted(groups.items()):  # The runs furthest behind first.
      state, sums = _initial_states(exp, [runs[k] for k in members],
                                    [starts[k] for k in members])
      for k in members:
        starts[k] = None  # Restored states: now in `state` only.
      group = run.train_runs(_mapped(exp) if len(members) > 1 else exp,
                             [runs[k] for k in members], state, sums, stop)
      for k, record in zip(members, group):
        records[k] = record
  for this, record in zip(runs, records):
    this.reporter.info(this.reporter.label
                       + report_lib.accuracy_summary(record, exp.evaluators)
                       + f" (step {record['step']}, {this.workdir})")
  return records


def _initial_states(exp: run.Experiment, runs: list[run.Run], starts: list[tuple]):
  """(state, epoch sums) of runs at the same step, stacked (`run.stack`); fresh runs
  start from their seeds' initial states."""
  if starts[0][2] == 0:
    keys = [run.root_keys(r.config.seed)["init"] for r in runs]
    create = jax.jit(jax.vmap(exp.create), out_shardings=mesh_lib.replicated(exp.mesh))
    state = create(run.stack(keys))
  else:
    state = run.stack([s[0] for s in starts])
  return state, run.stack([s[1] for s in starts])


def _mapped(exp: run.Experiment) -> run.Experiment:
  """`exp` whose train_chunk maps over stacked states and batch rows."""
  train_fn, _ = exp.step_functions
  return dataclasses.replace(exp, train_chunk=run.jit_train_chunk(train_fn, mapped=True))
