"""Faults of a run's workdir and of training: a second run, a stale lock, a disk that
fills during a save, divergence, and the history of a run's starts."""

import json
import os
import subprocess
import sys
import time

import pytest

from cnn_jax import checkpoint, report, run, workdir
from cnn_jax.errors import WorkdirError
from tests import test_resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 640 images, batch 32: 20 steps per epoch, 2 epochs, a checkpoint every 5 steps.
SHORT = ("--config.train_split=train[:640]", "--config.num_epochs=2",
         "--config.checkpoint_every_steps=5", "--config.steps_per_dispatch=5")


def test_a_second_run_is_refused_and_a_stale_lock_taken_over(tmp_path):
  with workdir.locked(str(tmp_path)):
    with pytest.raises(WorkdirError, match=f"in use by another run: process {os.getpid()}"):
      with workdir.locked(str(tmp_path)):
        pass
  said = []
  with workdir.locked(str(tmp_path), said.append):  # Released: taken again at once.
    pass
  assert said == []
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  import socket  # pylint: disable=g-import-not-at-top
  host = socket.gethostname()
  (tmp_path / workdir.LOCK_FILE).write_text(json.dumps(
      {"pid": dead.pid, "host": host, "since": time.time()}))  # As a SIGKILL leaves it.
  with workdir.locked(str(tmp_path), said.append):
    assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert said == [f"taking over the lock of {tmp_path} left by process {dead.pid} on "
                  f"{host}, which is gone"]


def test_two_runs_in_one_workdir(data_dir, tmp_path):
  first = subprocess.Popen(test_resume.command(tmp_path, data_dir, *SHORT,
                                               "--config.num_epochs=1000"),
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    test_resume.wait_for_checkpoint(tmp_path, 5, first)
    started = time.time()
    second = subprocess.run(test_resume.command(tmp_path, data_dir, *SHORT), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert f"in use by another run: process {first.pid}" in second.stderr
    assert time.time() - started < 60
  finally:
    first.kill()
    first.wait()
  records = report.read_metrics(tmp_path)
  assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
  return out.returncode == 0


def test_a_disk_that_fills_during_a_save(data_dir, tmp_path):
  ckpt_dir = tmp_path / "run" / run.CHECKPOINT_DIR
  # A filesystem of 9 MB holds two checkpoints of this model (about 4 MB each) and not
  # the third: the save of step 15 fails with "No space left on device".
  if not _mount_tmpfs(ckpt_dir, "9m"):
    pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
  try:
    started = time.time()
    out = subprocess.run(test_resume.command(tmp_path / "run", data_dir, *SHORT),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.time() - started < 120
    assert out.stderr.startswith("error: Saving checkpoint step 15") and (
        "No space left on device" in out.stderr or "RESOURCE_EXHAUSTED" in out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1  # No library dumps.
    assert "preempted" not in out.stderr and "saved" not in out.stderr
    ckpts = checkpoint.Checkpoints(str(ckpt_dir))
    state, _, step, skipped = ckpts.restore_newest_good(test_resume_state())
    assert step == 10 and not skipped  # The previous checkpoints still load.
    ckpts.close()
    subprocess.run(["mount", "-o", "remount,size=64m", str(ckpt_dir)], check=True)
    again = test_resume.train_cli(tmp_path / "run", data_dir, *SHORT)
    assert "resumed from checkpoint step 10" in again
    assert [r["epoch"] for r in report.read_metrics(tmp_path / "run")] == [1, 2]
  finally:
    subprocess.run(["umount", str(ckpt_dir)], check=False)


def test_resume_state():
  """A TrainState of the tutorial model, as the runner makes it (restore target)."""
  from tests.test_checkpoint import trained_state  # pylint: disable=g-import-not-at-top
  return trained_state()


test_resume_state.__test__ = False


def test_divergence_stops_keeps_the_last_checkpoint_and_says_what_to_do(data_dir,
                                                                         tmp_path):
  out = subprocess.run(test_resume.command(tmp_path, data_dir, *SHORT,
                                           "--config.learning_rate=1e9"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 3, out.stderr[-2000:]
  assert out.stderr.startswith("error: Training diverged in epoch 1, steps 0-5: mean "
                               "training loss ")
  assert "Lower --config.learning_rate" in out.stderr and "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "checkpoints" / "5")  # Nothing diverged is saved.


def test_every_start_keeps_its_config(one_epoch_copy):
  config, path = one_epoch_copy
  config.num_epochs = 2  # Allowed: more epochs of a constant schedule.
  run.train_and_evaluate(config, path)
  starts = sorted(os.listdir(os.path.join(path, workdir.STARTS_DIR)))
  assert starts == ["0-step0.json", "1-step125.json"]
  with open(os.path.join(path, workdir.STARTS_DIR, starts[0])) as f:
    assert json.load(f)["config"]["num_epochs"] == 1
  with open(os.path.join(path, workdir.STARTS_DIR, starts[1])) as f:
    assert json.load(f)["config"]["num_epochs"] == 2


@pytest.fixture
def one_epoch_copy(data_dir, tmp_path):
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = seed_cnn.get_config()
  config.data_dir, config.num_epochs = data_dir, 1
  path = str(tmp_path / "run")
  run.train_and_evaluate(config, path)
  return config, path


def test_a_torn_last_metrics_line_is_dropped_on_resume(one_epoch_copy):
  config, path = one_epoch_copy
  with open(os.path.join(path, report.METRICS_FILE), "a") as f:
    f.write('{"epoch": 2, "step": 25')  # A crash in the middle of the append.
  config.num_epochs = 2
  run.train_and_evaluate(config, path)
  assert [r["epoch"] for r in report.read_metrics(path)] == [1, 2]
