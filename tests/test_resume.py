"""Checkpoints you can trust: exact resume after SIGKILL/SIGTERM, retention, damage,
config mismatch, unwritable workdirs and restores across device counts."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn_jax import checkpoint, preemption, report, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "cnn_jax.main", "train", "--config",
          "experiments/seed_cnn.py", "--workdir", str(workdir),
          f"--config.data_dir={data_dir}", *overrides]


# 1,280 training images, batch 32: 40 steps per epoch, 160 steps in all; a checkpoint
# every 15 steps, dispatches of 5 steps.
SMALL = ("--config.train_split=train[:1280]", "--config.num_epochs=4",
         "--config.checkpoint_every_steps=15", "--config.steps_per_dispatch=5")


def train_cli(workdir, data_dir, *overrides, devices=None):
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run(command(workdir, data_dir, *overrides), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def final_params(workdir):
  """The arrays of the newest checkpoint's state, as nested dicts of numpy arrays."""
  directory = os.path.join(workdir, run.CHECKPOINT_DIR)
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  path = os.path.join(directory, str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    # As numpy, whatever device count wrote it.
    tree = ckptr.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = ckptr.restore(path, restore_args=args)
  return step, state


def assert_trees_equal(a, b, exact=True, atol=2e-5):
  flat_a = sorted(_flatten(a).items())
  flat_b = sorted(_flatten(b).items())
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (key, x), (_, y) in zip(flat_a, flat_b):
    if exact:
      np.testing.assert_array_equal(x, y, err_msg=key)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=atol, err_msg=key)


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}/{k}"))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, v in enumerate(tree):
      out.update(_flatten(v, f"{prefix}/{i}"))
    return out
  if tree is None:
    return {}
  if hasattr(tree, "dtype") and jax.dtypes.issubdtype(tree.dtype, jax.dtypes.prng_key):
    tree = jax.random.key_data(tree)
  return {prefix: np.asarray(tree)}


def learning_metrics(workdir):
  keep = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
  return [{k: r[k] for k in keep} for r in report.read_metrics(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  train_cli(workdir, data_dir, *SMALL)
  return workdir


def wait_for_checkpoint(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, run.CHECKPOINT_DIR, str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, "the run ended before the checkpoint appeared"
    assert time.time() < deadline, f"no checkpoint {path} after {timeout} s"
    time.sleep(0.02)


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(uninterrupted, data_dir,
                                                            tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(command(workdir, data_dir, *SMALL), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_checkpoint(workdir, 45, proc)
  proc.kill()
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  out = train_cli(workdir, data_dir, *SMALL)
  resumed = int(out.split("resumed from checkpoint step ")[1].split()[0])
  assert 45 <= resumed < 160
  step, params = final_params(workdir)
  ref_step, ref_params = final_params(uninterrupted)
  assert step == ref_step == 160
  assert_trees_equal(params, ref_params, exact=True)
  assert learning_metrics(workdir) == learning_metrics(uninterrupted)


def test_signal_saves_stops_and_resumes_exactly(uninterrupted, data_dir, tmp_path):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(command(workdir, data_dir, *SMALL), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_checkpoint(workdir, 45, proc)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  if proc.poll() is None:
    proc.send_signal(signal.SIGINT)  # A second signal while saving must not break it.
  _, err = proc.communicate(timeout=60)
  assert time.time() - sent < 15
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "preempted: stopped by SIGTERM" in err
  saved = int(err.split("checkpoint of step ")[1].split(";")[0])
  assert saved % 5 == 0 and 45 <= saved < 160
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, run.CHECKPOINT_DIR))
  assert ckpts.latest_step() == saved
  ckpts.close()
  out = train_cli(workdir, data_dir, *SMALL)
  assert f"resumed from checkpoint step {saved}" in out
  _, params = final_params(workdir)
  assert_trees_equal(params, final_params(uninterrupted)[1], exact=True)
  assert learning_metrics(workdir) == learning_metrics(uninterrupted)


def test_latest_and_best_are_both_kept_when_the_final_metric_is_poor(tmp_path):
  from tests.test_checkpoint import trained_state
  state = trained_state()
  ckpts = checkpoint.Checkpoints(str(tmp_path / "c"), keep_latest=2, keep_best=1,
                                 best_metric="validation_accuracy")
  for step, acc in [(10, 0.5), (20, 0.9), (25, None), (30, 0.6), (40, 0.3)]:
    ckpts.save(step, state, meta={"step": step},
               metrics=None if acc is None else {"validation_accuracy": acc})
    ckpts.wait()
  assert ckpts.all_steps() == [20, 30, 40]
  assert ckpts.best_step() == 20 and ckpts.latest_step() == 40
  ckpts.close()


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
  """A finished 1-epoch run (125 steps) with checkpoints at steps 100 and 125."""
  from experiments import seed_cnn
  config = seed_cnn.get_config()
  config.data_dir = data_dir
  config.num_epochs = 1
  config.checkpoint_every_steps = 50
  workdir = str(tmp_path_factory.mktemp("one_epoch") / "run")
  record = run.train_and_evaluate(config, workdir)
  return config, workdir, record


def _copy(one_epoch, tmp_path):
  """A copy of the finished run's workdir, and a copy of its config to edit."""
  config, workdir, record = one_epoch
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  return config.copy_and_resolve_references(), copy, record


def _largest_file(path):
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(os.path.join(step_dir, "state"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete_data(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def _flip_bytes(step_dir):
  """Silent damage: the same size, a few bytes changed (a bad disk, a bad copy)."""
  path = _largest_file(os.path.join(step_dir, "state"))
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("damage", [_truncate, _delete_data, _flip_bytes])
def test_damaged_latest_checkpoint_falls_back_and_retrains(one_epoch, tmp_path, capsys,
                                                           damage):
  config, workdir, record = _copy(one_epoch, tmp_path)
  ckpt_dir = os.path.join(workdir, run.CHECKPOINT_DIR)
  assert sorted(os.listdir(ckpt_dir)) == ["100", "125"]
  damage(os.path.join(ckpt_dir, "125"))
  again = run.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 125 is damaged" in out
  assert "resumed from checkpoint step 100" in out
  assert again["test_accuracy"] == record["test_accuracy"]
  assert again["test_loss"] == record["test_loss"]
  assert os.listdir(ckpt_dir + "_damaged")[0].startswith("125-")
  assert [r["step"] for r in report.read_metrics(workdir)] == [125]


def test_empty_step_folder_and_leftover_tmp_are_skipped(one_epoch, tmp_path, capsys):
  config, workdir, record = _copy(one_epoch, tmp_path)
  ckpt_dir = os.path.join(workdir, run.CHECKPOINT_DIR)
  os.makedirs(os.path.join(ckpt_dir, "300"))
  os.makedirs(os.path.join(ckpt_dir, "200.orbax-checkpoint-tmp", "state"))
  config.num_epochs = 2
  more = run.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 300 is damaged" in out
  assert "resumed from checkpoint step 125" in out
  assert more["step"] == 250
  assert "200.orbax-checkpoint-tmp" not in os.listdir(ckpt_dir)


def test_all_checkpoints_damaged_never_starts_from_scratch(one_epoch, tmp_path):
  config, workdir, _ = _copy(one_epoch, tmp_path)
  ckpt_dir = os.path.join(workdir, run.CHECKPOINT_DIR)
  for step in ("100", "125"):
    _delete_data(os.path.join(ckpt_dir, step))
  with pytest.raises(checkpoint.CheckpointError, match="None of the checkpoints"):
    run.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(ckpt_dir)) == ["100", "125"]


def _tree_digest(path):
  digest = hashlib.sha256()
  for d, _, files in sorted(os.walk(path)):
    for f in sorted(files):
      digest.update(os.path.relpath(os.path.join(d, f), path).encode())
      with open(os.path.join(d, f), "rb") as fh:
        digest.update(fh.read())
  return digest.hexdigest()


@pytest.mark.parametrize("field, value, named", [
    ("batch_size", 64, "batch_size: checkpoint has 32, config has 64"),
    ("model_kwargs", {"hidden": 128}, "model_kwargs"),
    ("dataset", "mnist_5k_other", None),
    ("lr_schedule", "cosine", "lr_schedule: checkpoint has 'constant', config has 'cosine'"),
    ("seed", 1, "seed: checkpoint has 0, config has 1"),
    ("learning_rate", 3e-4, "learning_rate: checkpoint has 0.001, config has 0.0003"),
    ("train_split", "train[:3000]", "train_split: checkpoint has 'train'"),
    ("normalize", True, "normalize: checkpoint has False, config has True"),
    ("crop_padding", 2, "crop_padding: checkpoint has 0, config has 2"),
    ("dtype", "bfloat16", "dtype: checkpoint has 'float32', config has 'bfloat16'"),
])
def test_resuming_with_a_different_config_is_refused_untouched(one_epoch, tmp_path, field,
                                                               value, named):
  config, workdir, _ = _copy(one_epoch, tmp_path)
  before = _tree_digest(workdir)
  if field == "model_kwargs":
    config.model_kwargs.hidden = 128
  else:
    setattr(config, field, value)
  if named is None:  # Unknown dataset: fails before the workdir is looked at.
    with pytest.raises(ValueError, match="mnist_5k_other"):
      run.train_and_evaluate(config, workdir)
  else:
    with pytest.raises(checkpoint.CheckpointError, match=named):
      run.train_and_evaluate(config, workdir)
  assert _tree_digest(workdir) == before


def test_unwritable_workdir_fails_before_training(seed_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="cannot be written"):
    run.train_and_evaluate(seed_config, str(blocker / "run"))


def test_eval_command_evaluates_latest_best_and_numbered_steps(one_epoch, capsys):
  _, workdir, record = one_epoch
  latest = run.evaluate_checkpoint(workdir, "latest")
  assert latest == {k: record[k] for k in latest}  # Exactly the logged numbers.
  assert latest["step"] == 125 and "test_top5_accuracy" in latest
  # The tutorial keeps the latest checkpoints only: there is no "best" to choose.
  with pytest.raises(checkpoint.CheckpointError, match="keeps no best checkpoint"):
    run.evaluate_checkpoint(workdir, "best")
  assert run.evaluate_checkpoint(workdir, "100")["step"] == 100
  assert "checkpoint step 100: test accuracy" in capsys.readouterr().out
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint step 7 .* 100, 125"):
    run.evaluate_checkpoint(workdir, "7")
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint step foo"):
    run.evaluate_checkpoint(workdir, "foo")  # Refused before any data is loaded.


# 640 training images, batch 64: 10 steps per epoch.
TINY = ("--config.train_split=train[:640]", "--config.batch_size=64",
        "--config.steps_per_dispatch=5")


@pytest.mark.parametrize("first, then", [(8, 1), (1, 8)])
def test_checkpoint_moves_between_device_counts(data_dir, tmp_path, first, then):
  start = tmp_path / "start"
  train_cli(start, data_dir, *TINY, "--config.num_epochs=1", devices=first)
  moved, stayed = tmp_path / "moved", tmp_path / "stayed"
  shutil.copytree(start, moved)
  shutil.copytree(start, stayed)
  out = train_cli(moved, data_dir, *TINY, "--config.num_epochs=2", devices=then)
  assert f"{then} device(s)" in out and "resumed from checkpoint step 10" in out
  train_cli(stayed, data_dir, *TINY, "--config.num_epochs=2", devices=first)
  # Equal up to float reduction order: sums over 8 shards differ in the last bits.
  moved_state, stayed_state = final_params(moved)[1], final_params(stayed)[1]
  assert_trees_equal(moved_state["params"], stayed_state["params"], exact=False,
                     atol=1e-4)  # A tenth of one Adam step (learning rate 1e-3).
  assert_trees_equal(moved_state["opt_state"], stayed_state["opt_state"], exact=False,
                     atol=2e-4)
  moved_acc = report.read_metrics(moved)[-1]["test_accuracy"]
  assert abs(moved_acc - report.read_metrics(stayed)[-1]["test_accuracy"]) <= 0.002


def test_damage_is_one_line_on_the_command_line(one_epoch, data_dir, tmp_path):
  _, workdir, _ = _copy(one_epoch, tmp_path)
  _truncate(os.path.join(workdir, run.CHECKPOINT_DIR, "125"))
  out = subprocess.run(command(workdir, data_dir, "--config.num_epochs=1",
                               "--config.checkpoint_every_steps=50"),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stderr == ""  # No Orbax or TensorStore dumps.
  damaged = [line for line in out.stdout.splitlines() if "is damaged" in line]
  assert len(damaged) == 1 and damaged[0].startswith("checkpoint step 125 is damaged (")
  assert "resumed from checkpoint step 100" in out.stdout
