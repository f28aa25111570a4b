"""The experiment loop: init or resume -> epochs -> eval -> save -> report."""

import functools
import os
import time

import jax
import ml_collections
import optax

from cnn_jax import checkpoint as checkpoint_lib
from cnn_jax import data as data_lib
from cnn_jax import mesh as mesh_lib
from cnn_jax import metrics as metrics_lib
from cnn_jax import models
from cnn_jax import report as report_lib
from cnn_jax import train as train_lib
from cnn_jax.data import in_memory
from cnn_jax.data import preprocess

CHECKPOINT_DIR = "checkpoints"


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent streams of the run, all derived from the config seed."""
  root = jax.random.key(seed)
  return {"init": jax.random.fold_in(root, 0), "data": jax.random.fold_in(root, 1)}


def fingerprint(config, info) -> dict:
  """What a checkpoint must agree on with the config that resumes it."""
  return {"model": config.model, "model_kwargs": dict(config.model_kwargs),
          "dataset": config.dataset, "image_shape": list(info.image_shape),
          "num_classes": info.num_classes, "batch_size": config.batch_size}


def check_workdir(workdir: str) -> None:
  """Fails before any work if `workdir` cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f"Workdir {workdir!r} cannot be written ({e.strerror}). Choose another "
        "--workdir or fix its permissions.") from e


def check_fingerprint(saved: dict, current: dict, workdir: str) -> None:
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current[k]!r}"
           for k in current if saved.get(k) != current[k]]
  if diffs:
    raise checkpoint_lib.CheckpointError(
        f"The checkpoints in {workdir} belong to a different experiment ("
        + "; ".join(diffs) + "). Use a new --workdir for a new experiment.")


def build(config, mesh, info):
  """The model, optimizer and an initialised TrainState replicated on the mesh."""
  model = models.build_model(config.model, info.num_classes, **config.model_kwargs)
  tx = optax.adam(config.learning_rate)
  create = functools.partial(train_lib.create_train_state, model,
                             image_shape=info.image_shape, tx=tx)
  state = jax.jit(create, out_shardings=mesh_lib.replicated(mesh))(
      root_keys(config.seed)["init"])
  return model, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its newest good checkpoint.

  Returns:
    The last epoch's record (train/test loss and accuracy, images/s, ...).
  """
  workdir = os.path.abspath(workdir)
  check_workdir(workdir)
  reporter = report_lib.Reporter(workdir)
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.batch_size, mesh)
  mesh_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")

  data = data_lib.load(config, mesh)
  info = data.info
  _, state = build(config, mesh, info)
  ckpts = checkpoint_lib.Checkpoints(
      os.path.join(workdir, CHECKPOINT_DIR), keep_latest=config.keep_checkpoints,
      keep_best=config.keep_best_checkpoints, best_metric=config.best_metric,
      best_mode=config.best_mode)
  current = fingerprint(config, info)
  restored, meta, restored_step, skipped = ckpts.restore_newest_good(state)
  for step, reason in skipped:
    reporter.info(f"checkpoint step {step} is damaged ({reason}); skipped")
  epoch_sums = train_lib.zero_metrics()
  if restored is not None:
    check_fingerprint(meta["fingerprint"], current, workdir)
    state = restored
    epoch_sums = jax.tree.map(lambda z, v: z + v, epoch_sums, meta["epoch_sums"])
    report_lib.truncate_metrics(workdir, restored_step)
    reporter.info(f"resumed from checkpoint step {restored_step} in {ckpts.directory}")
  reporter.write_config(config)

  batch_sharding = mesh_lib.batch_sharding(mesh)
  train_chunk = jax.jit(
      functools.partial(train_lib.train_steps, preprocess=preprocess.scale_to_unit,
                        batch_sharding=batch_sharding), donate_argnums=0)
  evaluate = jax.jit(functools.partial(
      train_lib.evaluate, preprocess=preprocess.scale_to_unit, batch_sharding=batch_sharding))
  epoch_order = jax.jit(in_memory.epoch_order, static_argnums=(2, 3))
  eval_batch = min(config.eval_batch_size,
                   -(-info.num_test // mesh.devices.size) * mesh.devices.size)
  eval_idx, eval_mask = in_memory.eval_order(info.num_test, eval_batch)
  data_key = root_keys(config.seed)["data"]

  steps_per_epoch = info.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {info.num_train} "
                     "training examples; lower --config.batch_size.")
  total_steps = steps_per_epoch * config.num_epochs
  chunk = max(1, config.steps_per_dispatch)
  step = int(state.step)
  record = None
  reporter.info(
      f"{config.model} on {info.name}: {info.num_train} train / {info.num_test} test, "
      f"image {info.image_shape}, {info.num_classes} classes, {mesh.devices.size} "
      f"device(s) ({jax.devices()[0].platform}); {steps_per_epoch} steps/epoch, "
      f"starting at step {step} of {total_steps}")

  while step < total_steps:
    epoch, pos = divmod(step, steps_per_epoch)
    order = epoch_order(data_key, epoch, info.num_train, config.batch_size)
    first_pos = pos
    t0 = time.perf_counter()
    with reporter.progress(steps_per_epoch, pos, epoch + 1) as bar:
      while pos < steps_per_epoch:
        # Chunks end on multiples of `chunk` so a resumed epoch runs the same programs.
        end = min((pos // chunk + 1) * chunk, steps_per_epoch)
        state, sums = train_chunk(state, data.train.images, data.train.labels,
                                  order[pos:end])
        epoch_sums = train_lib.add_metrics(epoch_sums, sums)
        loss_sum = float(sums["loss"])
        if loss_sum != loss_sum:
          raise FloatingPointError(
              f"NaN training loss in epoch {epoch + 1} before step {step + end - pos}; "
              "lower --config.learning_rate or check the data.")
        step += end - pos
        bar.update(end - pos)
        pos = end
    train_time = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_sums = evaluate(state, data.test.images, data.test.labels, eval_idx, eval_mask)
    test = metrics_lib.summarize(test_sums, "test")
    eval_time = time.perf_counter() - t1
    record = {
        "epoch": epoch + 1, "step": step,
        **metrics_lib.summarize(epoch_sums, "train"), **test,
        "images_per_sec": (pos - first_pos) * config.batch_size / train_time,
        "eval_images_per_sec": info.num_test / eval_time,
        "learning_rate": config.learning_rate,
        "epoch_time_sec": train_time + eval_time,
    }
    epoch_sums = train_lib.zero_metrics()
    ckpts.save(step, state,
               meta={"epoch": epoch + 1, "fingerprint": current,
                     "epoch_sums": metrics_lib.to_host(epoch_sums)},
               metrics={k: record[k] for k in ("test_accuracy", "test_loss")})
    reporter.epoch(record)

  if record is None:  # Nothing left to train: report the restored state.
    test = metrics_lib.summarize(
        evaluate(state, data.test.images, data.test.labels, eval_idx, eval_mask), "test")
    previous = report_lib.read_metrics(workdir)
    record = {**(previous[-1] if previous else {}), **test, "step": step}
    reporter.info("training already complete; evaluated the latest checkpoint")
  ckpts.close()
  reporter.info(f"final test accuracy: {record['test_accuracy']:.4f} "
                f"(test loss {record['test_loss']:.4f}, step {step})")
  return record
