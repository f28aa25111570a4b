"""Fault injection: a run killed with SIGKILL at several points (a train chunk, an
evaluation, a save in flight, just after an epoch's metrics were written), then
resumed, ends bitwise equal to an uninterrupted run, each epoch logged once."""

import os
import signal
import subprocess
import sys

import pytest

from cnn_jax import report
from tests import test_resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The run of test_resume.SMALL (40 steps per epoch, 4 epochs, a checkpoint every 15
# steps, dispatches of 5), killed where argv[1] says.
KILLED = """
import os, signal, sys
from cnn_jax import checkpoint, report, run
from experiments import seed_cnn
point, data_dir, workdir = sys.argv[1:4]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if point == "train":  # Right after the dispatch that ends at step 65 (epoch 2).
  check = run.check_divergence
  def check_then_die(loss, classes, factor, epoch, first, last, saved):
    check(loss, classes, factor, epoch, first, last, saved)
    if last == 65:
      die()
  run.check_divergence = check_then_die
elif point == "eval":  # During the evaluation after epoch 2.
  evaluate = run.Experiment.evaluate_due
  def evaluate_and_die(self, state, epoch=None):
    if epoch == 2:
      die()
    return evaluate(self, state, epoch)
  run.Experiment.evaluate_due = evaluate_and_die
elif point == "save":  # While the asynchronous save of step 90 is being written.
  save = checkpoint.Checkpoints.save
  def save_and_die(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == 90:
      die()
  checkpoint.Checkpoints.save = save_and_die
elif point == "metrics":  # After epoch 3's record, before its checkpoint.
  epoch = report.Reporter.epoch
  def epoch_and_die(self, record, details=None):
    epoch(self, record, details)
    if record["epoch"] == 3:
      die()
  report.Reporter.epoch = epoch_and_die
config = seed_cnn.get_config()
config.data_dir, config.train_split, config.num_epochs = data_dir, "train[:1280]", 4
config.checkpoint_every_steps, config.steps_per_dispatch = 15, 5
run.train_and_evaluate(config, workdir)
"""


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  test_resume.train_cli(workdir, data_dir, *test_resume.SMALL)
  return workdir


@pytest.mark.parametrize("point", ["train", "eval", "save", "metrics"])
def test_killed_anywhere_then_resumed_is_bitwise_the_same_run(reference, data_dir,
                                                              tmp_path, point):
  workdir = tmp_path / "run"
  killed = subprocess.run([sys.executable, "-c", KILLED, point, data_dir, str(workdir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  out = test_resume.train_cli(workdir, data_dir, *test_resume.SMALL)
  assert "resumed from checkpoint step" in out
  step, params = test_resume.final_params(workdir)
  ref_step, ref_params = test_resume.final_params(reference)
  assert step == ref_step == 160
  test_resume.assert_trees_equal(params, ref_params, exact=True)
  assert [r["epoch"] for r in report.read_metrics(workdir)] == [1, 2, 3, 4]
  assert test_resume.learning_metrics(workdir) == test_resume.learning_metrics(reference)
