"""The experiment loop: init or resume -> epochs -> eval -> save -> report."""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import checkpoint as checkpoint_lib
from cnn_jax import compile_cache
from cnn_jax import configs
from cnn_jax import cpu
from cnn_jax import data as data_lib
from cnn_jax import errors
from cnn_jax import evaluators as evaluators_lib
from cnn_jax import mesh as mesh_lib
from cnn_jax import metrics as metrics_lib
from cnn_jax import models
from cnn_jax import optim
from cnn_jax import preemption
from cnn_jax import report as report_lib
from cnn_jax import schema
from cnn_jax import train as train_lib
from cnn_jax import workdir as workdir_lib
from cnn_jax.data import augment as augment_lib
from cnn_jax.data import preprocess as preprocess_lib

CHECKPOINT_DIR = "checkpoints"


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent streams of the run, all derived from the config seed."""
  root = jax.random.key(seed)
  return {"init": jax.random.fold_in(root, 0), "data": jax.random.fold_in(root, 1)}


def fingerprint_defaults() -> dict:
  """Fingerprint fields newer than some checkpoints, with the value those runs had (the
  schema's legacy values; `schedule_epochs` is derived). Of the others a checkpoint
  predates, such as the seed, the old value is not known."""
  return {"schedule_epochs": None, **schema.legacy_defaults(fingerprint_only=True)}


def fingerprint(config, info) -> dict:
  """What a checkpoint must agree on with the config that resumes it: every setting
  that changes the run's trajectory (the schema's fingerprint fields).

  The schedule is part of it: it shapes the optimizer state, and a decaying one is
  laid out over the run's num_epochs.
  """
  # Dicts and tuples as saved in JSON.
  plain = lambda v: json.loads(json.dumps(v.to_dict() if hasattr(v, "to_dict") else v))
  return {**{k: plain(config[k]) for k in schema.fingerprint_fields()},
          "image_shape": list(info.image_shape), "num_classes": info.num_classes,
          "schedule_epochs": (None if config.lr_schedule == "constant"
                              else config.num_epochs)}


def check_fingerprint(saved: dict, current: dict, workdir: str) -> None:
  """Refuses to resume under a config that changes the trajectory, naming the fields.

  Fields a checkpoint predates (not saved, no known default) cannot be compared.
  """
  saved = {**fingerprint_defaults(), **saved}
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current[k]!r}"
           for k in current if k in saved and saved[k] != current[k]]
  if diffs:
    raise checkpoint_lib.CheckpointError(
        f"The checkpoints in {workdir} belong to a different experiment ("
        + "; ".join(diffs) + "). Nothing was changed; use a new --workdir for a new "
        "experiment, or the original config to resume this one.")


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built from a config: data, state, compiled steps."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  data: data_lib.Dataset
  state: train_lib.TrainState
  train_chunk: callable
  evaluate_fn: callable
  fingerprint: dict
  schedule: callable  # Optimizer step -> learning rate.
  load_sec: float  # Time to open the dataset and load it onto the devices.
  evaluators: list[evaluators_lib.Evaluator]
  model_summary: dict  # models.summary: parameters and forward FLOPs per image.
  create: callable  # Init key -> TrainState (`state_factory`).
  step_functions: tuple  # (train_steps, evaluate) before jit (`step_functions`).

  def evaluate(self, state, ev: evaluators_lib.Evaluator) -> tuple[dict, dict]:
    """(scalars, details) of evaluator `ev` on `state`: every example of its split."""
    sums = functools.reduce(train_lib.add_metrics, (
        self.evaluate_fn(state, chunk.arrays, chunk.index, chunk.mask, top_k=ev.top_k,
                         ema=ev.ema, tta=ev.tta)
        for chunk in self.data.eval_chunks(ev.split)))
    return metrics_lib.eval_summary(sums, ev.name, ev.metrics, ev.top_k,
                                    self.data.info.class_names)

  def evaluate_due(self, state, epoch=None) -> tuple[dict, dict[str, dict]]:
    """Scalars and {name: details} of the evaluators due after `epoch` (None: all)."""
    scalars, details = {}, {}
    for ev in self.evaluators:
      if epoch is None or ev.due(epoch, self.config.num_epochs):
        scalars_ev, details[ev.name] = self.evaluate(state, ev)
        scalars.update(scalars_ev)
    return scalars, details


# The keys of an epoch record that measure time: they differ from one run to the next
# where every other key (losses, accuracies, steps) is the run's result.
TIMING_KEYS = ("images_per_sec", "eval_images_per_sec", "data_wait_sec", "epoch_time_sec",
               "train_time_sec", "train_compile_sec", "eval_time_sec", "eval_compile_sec",
               "time_unix")


def schedule_args(config, per_epoch: int) -> dict:
  """The config's learning-rate schedule (`optim.make_schedule` arguments), in steps."""
  return {"name": config.lr_schedule, "learning_rate": config.learning_rate,
          "total_steps": per_epoch * config.num_epochs,
          "warmup_steps": round(config.warmup_epochs * per_epoch)}


def input_fns(config, data: data_lib.Dataset):
  """(preprocess, augment) from config; normalisation statistics from the train split."""
  mean, std = data.channel_stats or (None, None)
  return (preprocess_lib.make_preprocess(mean, std),
          augment_lib.make_augment(config.crop_padding, config.flip))


def state_factory(config, model, image_shape, steps_per_epoch: int):
  """`key -> TrainState` of the config's model and optimizer (also what a restore
  target is made from, with jax.eval_shape)."""
  tx = optim.make_optimizer(
      **schedule_args(config, steps_per_epoch), optimizer=config.optimizer,
      optimizer_kwargs=config.optimizer_kwargs.to_dict(), weight_decay=config.weight_decay,
      grad_clip_norm=config.grad_clip_norm)
  return functools.partial(train_lib.create_train_state, model, image_shape=image_shape,
                           tx=tx, ema=config.ema_decay > 0)


def train_steps_fn(config, preprocess, augment, mix, batch_sharding):
  """`train.train_steps` with the config's step options and these input functions."""
  step_options = dict(label_smoothing=config.label_smoothing,
                      accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay)
  return functools.partial(train_lib.train_steps, preprocess=preprocess, augment=augment,
                           mix=mix, step_options=step_options,
                           batch_sharding=batch_sharding)


def jit_train_chunk(train_fn, mapped: bool = False):
  """The one jitted chunk of training steps: what every dispatch of the runner runs,
  and what `./run.sh bench` times. It takes and returns states and metric sums
  stacked on a leading axis of runs (`stack`), with row indices [runs, steps,
  batch]; the state is donated. One run is a stack of one: `train_fn` (a bound
  `train.train_steps`) on its only entry, no vmap. `mapped`: several runs (vmapped
  seeds), their data arrays shared."""
  if mapped:
    return jax.jit(jax.vmap(train_fn, in_axes=(0, None, 0)), donate_argnums=0)

  def train_steps(state, arrays, index):  # The program's name, as train.train_steps'.
    state, sums = train_fn(jax.tree.map(lambda x: x[0], state), arrays, index[0])
    return jax.tree.map(lambda x: x[None], (state, sums))
  return jax.jit(train_steps, donate_argnums=0)


@jax.jit
def stack(trees: list):
  """Trees of the same structure, stacked on a new leading axis (a stack of runs): one
  compiled program, not one per array."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@functools.partial(jax.jit, static_argnums=1)
def entry(tree, k: int):
  """Run k's entries of a stacked tree (`stack`), in one compiled program."""
  return jax.tree.map(lambda x: x[k], tree)


def compile_train_chunk(config, preprocess, augment, mix, batch_sharding):
  """`jit_train_chunk` of the config's steps with these input functions (the bench's
  entry point: no dataset needed)."""
  return jit_train_chunk(train_steps_fn(config, preprocess, augment, mix, batch_sharding))


def configured_splits(config) -> list[str]:
  """The named splits a config gives a run (known before any data is read)."""
  has_validation = bool(config.validation_split or config.validation_fraction)
  return ["train", *(["validation"] if has_validation else []), "test"]


def step_functions(config, data: data_lib.Dataset, mesh) -> tuple[callable, callable]:
  """(train_steps, evaluate): `train_lib.train_steps` and `train_lib.evaluate` with the
  config's input functions and step options bound, not yet compiled."""
  preprocess, augment = input_fns(config, data)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  mix = augment_lib.make_mix(data.info.num_classes, config.mixup_alpha,
                             config.cutmix_alpha)
  return (train_steps_fn(config, preprocess, augment, mix, batch_sharding),
          functools.partial(train_lib.evaluate, preprocess=preprocess,
                            batch_sharding=batch_sharding))


def build_experiment(config) -> Experiment:
  """Loads the data onto the mesh and initialises the model and compiled steps."""
  compile_cache.compile_seconds()  # Counts compilation from here on (epoch records).
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.batch_size, mesh)
  mesh_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  evaluators = evaluators_lib.from_config(config.evals, configured_splits(config),
                                          ema=config.ema_decay > 0)
  t0 = time.perf_counter()
  data = data_lib.load(schema.section(config, "data"), mesh,
                       root_keys(config.seed)["data"],
                       steps_per_dispatch=config.steps_per_dispatch)
  load_sec = time.perf_counter() - t0
  info = data.info
  model = models.build_model(config.model, info.num_classes, config.dtype,
                             **config.model_kwargs)
  schedule = schedule_args(config, data.steps_per_epoch)
  create = state_factory(config, model, info.image_shape, data.steps_per_epoch)
  state = jax.jit(create, out_shardings=mesh_lib.replicated(mesh))(
      root_keys(config.seed)["init"])
  train_fn, evaluate_fn = step_functions(config, data, mesh)
  return Experiment(config, mesh, data, state, jit_train_chunk(train_fn),
                    jax.jit(evaluate_fn, static_argnames=("top_k", "ema", "tta")),
                    fingerprint(config, info), optim.make_schedule(**schedule), load_sec,
                    evaluators, models.summary(model, info.image_shape), create,
                    (train_fn, evaluate_fn))


def open_checkpoints(config, workdir: str) -> checkpoint_lib.Checkpoints:
  return checkpoint_lib.Checkpoints(
      os.path.join(workdir, CHECKPOINT_DIR), keep_latest=config.keep_checkpoints,
      keep_best=config.keep_best_checkpoints, best_metric=config.best_metric,
      best_mode=config.best_mode)


def chunk_end(step: int, pos: int, steps_per_epoch: int, chunk: int, every: int) -> int:
  """Position in the epoch where the dispatch that starts at `pos` ends.

  Dispatches end on multiples of `chunk` within the epoch, on multiples of `every`
  (checkpoint steps) and at the epoch's end. A run resumed from any checkpoint therefore
  runs exactly the same sequence of programs as an uninterrupted one (bitwise equal).
  """
  end = min((pos // chunk + 1) * chunk, steps_per_epoch)
  if every:
    end = min(end, pos + every - step % every)
  return end


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       label: str = "") -> dict:
  """Trains `config` in `workdir`, resuming from its newest good checkpoint; `label`
  starts its console lines (which of several runs it is).

  Returns:
    The last epoch's record (train/test loss and accuracy, images/s, ...).

  Raises:
    preemption.Preempted: a signal stopped the run after it saved a checkpoint.
  """
  workdir = os.path.abspath(workdir)
  configs.check(config, jax.device_count(), jax.process_count())
  cpu.enable()  # Before anything compiles: CPU programs lower onto its kernels.
  reporter = open_workdir(workdir, label)
  # Signals become stop requests from here on: a stop during start-up ends the run
  # before training, one during training saves first.
  with workdir_lib.locked(workdir, reporter.info), preemption.stop_on_signals() as stop:
    exp = build_experiment(config)
    ckpts = open_checkpoints(config, workdir)
    try:
      this = Run(config, workdir, reporter, ckpts, exp.fingerprint, exp.data)
      state, epoch_sums, _ = resume(exp, this, exp.state)
      exp.state = None  # The initial state was only a target: no second copy on device.
      [record] = train_runs(exp, [this], stack([state]), stack([epoch_sums]), stop)
    finally:
      ckpts.close()
      reporter.close()
  for ev in exp.evaluators:
    if f"{ev.name}_accuracy" in record:
      reporter.info(f"{label}final {ev.name} accuracy: {record[f'{ev.name}_accuracy']:.4f} "
                    f"({ev.name} loss {record.get(f'{ev.name}_loss', float('nan')):.4f}, "
                    f"step {record['step']})")
  return record


def open_workdir(workdir: str, label: str = "") -> report_lib.Reporter:
  """The reporter of `workdir`, after checking it can be written (before any work)."""
  workdir_lib.check_writable(workdir, os.path.join(workdir, CHECKPOINT_DIR))
  return report_lib.Reporter(workdir, label)


@dataclasses.dataclass
class Run:
  """One run of an experiment: its config, its workdir and what writes there, its
  fingerprint and the dataset as its seed orders it. `train_runs` trains one, or
  several seeds of one config at once (cnn_jax/seeds.py)."""
  config: ml_collections.ConfigDict
  workdir: str
  reporter: report_lib.Reporter
  ckpts: checkpoint_lib.Checkpoints
  fingerprint: dict
  data: data_lib.Dataset


def resume(exp: Experiment, this: Run, target) -> tuple:
  """(state, epoch sums, step) of the run's newest good checkpoint, or (`target`, zero
  sums, 0) when it has none; records this start and writes the run's description
  files (config, dataset, model)."""
  check = lambda meta: check_fingerprint(meta.get("fingerprint", {}), this.fingerprint,
                                         this.workdir)
  restored, meta, step, skipped = this.ckpts.restore_newest_good(target,
                                                                 check_meta=check)
  for bad, reason in skipped:  # All newer than the step restored: out of its way.
    this.reporter.info(f"checkpoint step {bad} is damaged ({reason}); skipped it "
                       f"({this.ckpts.set_aside(bad)})")
  report_lib.truncate_metrics(this.workdir, step or 0)
  if restored is None:
    state, sums, step = target, train_lib.zero_metrics(), 0
  else:
    this.reporter.info(f"resumed from checkpoint step {step} in {this.ckpts.directory}")
    state = restored
    sums = jax.tree.map(lambda z, v: z + np.float32(v), train_lib.zero_metrics(),
                        meta["epoch_sums"])
  workdir_lib.record_start(this.workdir, this.config, step)
  this.reporter.write_config(this.config, exp.evaluators)
  this.reporter.write_dataset(exp.data.info, exp.data.channel_stats)
  this.reporter.write_model(this.config.model, exp.model_summary)
  return state, sums, step


def check_divergence(loss: float, num_classes: int, factor: float, epoch: int,
                     first_step: int, last_step: int, saved_step) -> None:
  """Raises DivergenceError for a NaN or infinite loss, or one above `factor` times
  the loss of a uniform prediction, ln(num_classes), where every run starts."""
  limit = factor * math.log(max(num_classes, 2)) if factor else math.inf
  if math.isfinite(loss) and loss <= limit:
    return
  kept = (f"The last checkpoint (step {saved_step}) is kept" if saved_step is not None
          else "No checkpoint was written yet")
  raise errors.DivergenceError(
      f"Training diverged in epoch {epoch + 1}, steps {first_step}-{last_step}: mean "
      f"training loss {loss:.4g}, above {limit:.4g} ({factor} x ln {num_classes}, the "
      f"loss of a uniform guess). {kept}. Lower --config.learning_rate, add "
      "--config.warmup_epochs, or check the data; --config.divergence_factor=0 stops "
      "on NaN or inf only.")


def train_runs(exp: Experiment, runs: list[Run], state, epoch_sums,
               stop: preemption.StopRequest) -> list[dict]:
  """Trains `runs` from `state` to the end, each reporting and saving in its workdir;
  returns each one's last epoch record.

  `state` and `epoch_sums` are stacked on a leading axis of one entry per run: one
  run is a stack of one, several are seeds of one config at the same step
  (cnn_jax/seeds.py), the same loop for both. `exp.train_chunk` is `jit_train_chunk`'s
  (mapped over the runs where there are several; the data arrays shared, each run's
  batches its own).
  """
  loop = _Loop(exp, runs, stop, state, epoch_sums)
  loop.announce()
  if preemption.agreed(stop):  # During start-up: nothing new to save.
    raise preemption.Preempted(loop.step, stop.signum, saved=False)
  while loop.step < loop.total_steps:
    epoch, pos = divmod(loop.step, loop.steps_per_epoch)
    batches = [r.data.train_epoch(epoch, pos) for r in runs]
    t0, c0 = time.perf_counter(), compile_cache.compile_seconds()
    loop.train_epoch(epoch, pos, batches)  # Saves on the way where asked, or stopped.
    timing = {"train_time_sec": time.perf_counter() - t0,
              "train_compile_sec": compile_cache.compile_seconds() - c0}
    evals = loop.evaluate_epoch(epoch, loop.steps_per_epoch - pos, batches, timing)
    loop.epoch_sums = jax.tree.map(jnp.zeros_like, loop.epoch_sums)
    loop.save(metrics=lambda k: evals[k] if exp.config.best_metric in evals[k] else None)
    if preemption.agreed(stop) and loop.step < loop.total_steps:
      raise loop.preempted()
  # The last save completes while signals are still turned into stop requests.
  for r in runs:
    r.ckpts.wait()
  if stop:
    runs[0].reporter.info(f"{preemption.signal_name(stop.signum)} came after the last "
                          "epoch: the run is complete")
  loop.report_restored()
  return loop.records


@dataclasses.dataclass
class _Loop:
  """What `train_runs`' loop carries from dispatch to dispatch (state, sums, step,
  each run's last record) and the steps it takes, for one run or a stack of several."""
  exp: Experiment
  runs: list[Run]
  stop: preemption.StopRequest
  state: Any
  epoch_sums: Any

  def __post_init__(self):
    config = self.exp.config
    self.steps_per_epoch = self.exp.data.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.chunk = max(1, config.steps_per_dispatch)
    self.every = config.checkpoint_every_steps
    self.step = int(metrics_lib.host_value(self.part(self.state, 0).step))
    self.records = [None] * len(self.runs)

  def part(self, tree, k: int):
    """Run k's entries of a stacked tree."""
    return entry(tree, k)

  def announce(self) -> None:
    exp, config, info = self.exp, self.exp.config, self.exp.data.info
    lead = self.runs[0].reporter
    several = len(self.runs) > 1
    head = "" if several else lead.label  # Which run it is; a group's seeds each say.
    splits = " / ".join(f"{n} {s}" for s, n in info.splits.items())
    lead.info(f"{head}{config.model}: {report_lib.model_line(exp.model_summary)}")
    lead.info(
        f"{head}{config.model} on {info.name}: {splits}, "
        f"image {info.image_shape}, {info.num_classes} classes, "
        f"{exp.mesh.devices.size} device(s) ({jax.devices()[0].platform}); "
        f"{self.steps_per_epoch} steps/epoch, starting at step {self.step} of "
        f"{self.total_steps}; data loaded in {exp.load_sec:.2f} s ({exp.data.pipeline})"
        + (f"; {len(self.runs)} seeds in one program (jax.vmap)" if several else ""))

  def train_epoch(self, epoch: int, pos: int, batches) -> None:
    """Dispatches the epoch's steps from `pos`, checking each dispatch's sums after the
    next is queued (the device never waits for the host's checks; every check is done
    before anything is saved), saving every `checkpoint_every_steps` or when stopped."""
    unchecked = None
    with self.runs[0].reporter.progress(self.steps_per_epoch, pos, epoch + 1) as bar:
      while pos < self.steps_per_epoch:
        end = chunk_end(self.step, pos, self.steps_per_epoch, self.chunk, self.every)
        inputs = [b.take(pos, end) for b in batches]
        index = np.stack([i.index for i in inputs])
        self.state, sums = self.exp.train_chunk(self.state, inputs[0].arrays, index)
        self.epoch_sums = train_lib.add_metrics(self.epoch_sums, sums)
        if unchecked:
          self.check_chunk(*unchecked)
        unchecked = (sums, epoch, self.step, self.step + end - pos)
        self.step += end - pos
        bar.update(end - pos)
        pos = end
        stopping = preemption.agreed(self.stop)
        if pos < self.steps_per_epoch and (stopping or (
            self.every and self.step % self.every == 0)):
          self.check_chunk(*unchecked)
          unchecked = None
          self.save()
          if stopping:
            raise self.preempted()
      if unchecked:
        self.check_chunk(*unchecked)

  def check_chunk(self, sums, epoch: int, first: int, last: int) -> None:
    """Reads a dispatch's metric sums: divergence check and TensorBoard scalars."""
    sums = jax.tree.map(metrics_lib.host_value, sums)
    learning_rate = float(self.exp.schedule(last))
    for k, r in enumerate(self.runs):
      chunk_metrics = metrics_lib.summarize(self.part(sums, k), "train")
      try:
        check_divergence(chunk_metrics["train_loss"], self.exp.data.info.num_classes,
                         self.exp.config.divergence_factor, epoch, first, last,
                         r.ckpts.latest_step())
      except errors.DivergenceError as e:
        if len(self.runs) == 1:
          raise
        raise errors.DivergenceError(f"{r.workdir}: {e}") from None
      r.reporter.scalars(last, {**chunk_metrics, "learning_rate": learning_rate})

  def evaluate_epoch(self, epoch: int, steps: int, batches, timing: dict):
    """Each run's evaluations due after `epoch`, its record written and printed;
    returns each run's evaluation scalars. `timing`: the epoch's training time and
    the part of it spent compiling (train_time_sec, train_compile_sec)."""
    exp, evals = self.exp, []
    train_time = timing["train_time_sec"]
    for k, r in enumerate(self.runs):
      t1, c1 = time.perf_counter(), compile_cache.compile_seconds()
      scalars, details = exp.evaluate_due(self.part(self.state, k), epoch + 1)
      eval_time = time.perf_counter() - t1
      evaluated = sum(exp.data.info.splits[ev.split] for ev in exp.evaluators
                      if ev.name in details)
      self.records[k] = {
          "epoch": epoch + 1, "step": self.step,
          **metrics_lib.summarize(self.part(self.epoch_sums, k), "train"), **scalars,
          # Each run's own: the program trains all of them in that time.
          "images_per_sec": steps * exp.config.batch_size / train_time,
          "eval_images_per_sec": evaluated / eval_time,
          "data_wait_sec": batches[k].wait_sec,
          "learning_rate": float(exp.schedule(self.step)),
          "epoch_time_sec": train_time + eval_time,
          # Where the time went (./run.sh speedrun splits a run's time with these):
          # compilation is inside the training and evaluation times; time_unix is
          # when the record was made, on the wall clock.
          **timing, "eval_time_sec": eval_time,
          "eval_compile_sec": compile_cache.compile_seconds() - c1,
          "time_unix": time.time(),
      }
      # The record goes first: if the save after it is cut short, the resumed run
      # drops it (it is past the checkpoint) and redoes the epoch.
      r.reporter.epoch(self.records[k], details)
      evals.append(scalars)
    return evals

  def save(self, metrics=lambda k: None) -> None:
    epoch, pos = divmod(self.step, self.steps_per_epoch)
    for k, r in enumerate(self.runs):
      meta = {"step": self.step, "epoch": epoch, "position": pos,
              "fingerprint": r.fingerprint,
              "epoch_sums": metrics_lib.to_host(self.part(self.epoch_sums, k))}
      r.ckpts.save(self.step, self.part(self.state, k), meta=meta, metrics=metrics(k))

  def preempted(self) -> preemption.Preempted:
    for r in self.runs:
      r.ckpts.wait()
    return preemption.Preempted(self.step, self.stop.signum)

  def report_restored(self) -> None:
    """Runs with nothing left to train: their record from the restored state."""
    for k, r in enumerate(self.runs):
      if self.records[k] is None:
        previous = report_lib.read_metrics(r.workdir)
        self.records[k] = {**(previous[-1] if previous else {}),
                           **self.exp.evaluate_due(self.part(self.state, k))[0],
                           "step": self.step}
        r.reporter.info("training already complete; evaluated the latest checkpoint")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote into `workdir`."""
  problem = workdir_lib.not_a_run(workdir)
  if problem:
    raise checkpoint_lib.CheckpointError(problem)
  with open(os.path.join(workdir, report_lib.CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(schema.with_legacy_defaults(json.load(f)))


def evaluate_checkpoint(workdir: str, step: str = "latest") -> dict:
  """Runs every evaluator of a run on its checkpoint `step` ('latest', 'best', 'N').

  The step is checked before any data is loaded. The evaluation is the one the run
  logged: the same data, batches and compiled function, so it gives the same numbers.
  """
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  ckpts = open_checkpoints(config, workdir)
  try:
    chosen = ckpts.resolve(step)
    exp = build_experiment(config)
    if step == "latest":
      check = lambda meta: check_fingerprint(meta["fingerprint"], exp.fingerprint, workdir)
      state, _, chosen, skipped = ckpts.restore_newest_good(exp.state, check_meta=check)
      for bad, reason in skipped:
        print(f"checkpoint step {bad} is damaged ({reason}); skipped it")
    else:
      state, _ = ckpts.restore(chosen, exp.state)
    exp.state = None
  finally:
    ckpts.close()
  record = {"step": chosen, **exp.evaluate_due(state)[0]}
  if jax.process_index() == 0:
    print(f"checkpoint step {chosen}: " + report_lib.accuracy_summary(record, exp.evaluators),
          flush=True)
  return record
