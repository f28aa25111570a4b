"""Signals, held where they must land (not timed): after the last dispatch, during a
save, a third one, and during start-up."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from cnn_jax import checkpoint, preemption, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_signal_after_the_last_dispatch_ends_as_a_completed_run(seed_config, tmp_path,
                                                                   monkeypatch, capsys):
  evaluate_due = run.Experiment.evaluate_due

  def evaluate_then_signal(self, state, epoch=None):
    if epoch == self.config.num_epochs:
      os.kill(os.getpid(), signal.SIGTERM)  # Lands during the last evaluation.
    return evaluate_due(self, state, epoch)
  monkeypatch.setattr(run.Experiment, "evaluate_due", evaluate_then_signal)
  record = run.train_and_evaluate(seed_config, str(tmp_path / "run"))  # No Preempted.
  assert record["step"] == 125
  assert "SIGTERM came after the last epoch: the run is complete" in capsys.readouterr().out
  ckpts = checkpoint.Checkpoints(str(tmp_path / "run" / run.CHECKPOINT_DIR))
  assert ckpts.latest_step() == 125
  ckpts.close()


def test_a_second_signal_during_a_save_is_absorbed(seed_config, tmp_path, monkeypatch):
  seed_config.checkpoint_every_steps, seed_config.steps_per_dispatch = 25, 25
  save = checkpoint.Checkpoints.save
  signalled = []

  def save_with_signals(self, step, *args, **kwargs):
    if step == 50 and not signalled:
      os.kill(os.getpid(), signal.SIGTERM)  # Asks to stop...
      os.kill(os.getpid(), signal.SIGINT)  # ...and a second signal lands mid-save.
      signalled.append(step)
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpoint.Checkpoints, "save", save_with_signals)
  with pytest.raises(preemption.Preempted, match="after saving the checkpoint of step 75"):
    run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  ckpts = checkpoint.Checkpoints(str(tmp_path / "run" / run.CHECKPOINT_DIR))
  assert ckpts.all_steps() == [50, 75]  # Both saves complete.
  ckpts.close()


def test_signals_that_arrive_together_name_the_first():
  both = {signal.SIGTERM, signal.SIGINT}
  with preemption.stop_on_signals() as request:

    def send():  # To a thread that takes both, while the main thread blocks them.
      signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
      # To this thread itself, so that each arrives before the call returns (sent to
      # the process, another thread could take SIGTERM, and take it later).
      signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
      signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, both)
    try:
      sender = threading.Thread(target=send)
      sender.start()
      sender.join()  # Both arrived; Python runs their handlers now, SIGINT's first.
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert request.count == 2
    assert request.signum == signal.SIGTERM


THIRD_SIGNAL = """
import os, signal, sys
from cnn_jax import checkpoint, run
from experiments import seed_cnn
save = checkpoint.Checkpoints.save
def save_with_signals(self, step, *args, **kwargs):
  for _ in range(3):
    os.kill(os.getpid(), signal.SIGINT)
  return save(self, step, *args, **kwargs)
checkpoint.Checkpoints.save = save_with_signals
config = seed_cnn.get_config()
config.data_dir, config.checkpoint_every_steps = sys.argv[1], 25
run.train_and_evaluate(config, sys.argv[2])
"""


def test_a_third_signal_stops_at_once(data_dir, tmp_path):
  out = subprocess.run([sys.executable, "-c", THIRD_SIGNAL, data_dir, str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == preemption.FORCED_EXIT_CODE, out.stderr[-2000:]
  assert "SIGINT again: stopping now, without saving" in out.stdout


def test_a_signal_during_start_up_stops_before_training(seed_config, tmp_path,
                                                        monkeypatch):
  build = run.build_experiment

  def build_then_signal(config):
    exp = build(config)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the data loads.
    return exp
  monkeypatch.setattr(run, "build_experiment", build_then_signal)
  with pytest.raises(preemption.Preempted, match="before training, at step 0"):
    run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run" / run.CHECKPOINT_DIR) == []
