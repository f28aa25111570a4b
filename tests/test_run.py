"""End-to-end runs of the experiment runner on the embedded dataset."""

import json
import os
import subprocess
import sys

import pytest

from cnn_jax import checkpoint, report, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_epoch_writes_metrics_config_and_checkpoint(seed_config, tmp_path):
  workdir = str(tmp_path / "run")
  record = run.train_and_evaluate(seed_config, workdir)
  records = report.read_metrics(workdir)
  assert len(records) == 1 and records[0] == record
  assert record["epoch"] == 1 and record["step"] == 4000 // 32
  assert record["test_accuracy"] > 0.85
  for key in ("train_loss", "train_accuracy", "test_loss", "images_per_sec",
              "eval_images_per_sec", "learning_rate"):
    assert record[key] > 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 32
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, run.CHECKPOINT_DIR))
  assert ckpts.all_steps() == [125]
  ckpts.close()


def test_running_again_resumes_instead_of_starting_over(seed_config, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  first = run.train_and_evaluate(seed_config, workdir)
  again = run.train_and_evaluate(seed_config, workdir)  # Nothing left to train.
  assert again["test_accuracy"] == first["test_accuracy"]
  assert len(report.read_metrics(workdir)) == 1
  seed_config.num_epochs = 2
  more = run.train_and_evaluate(seed_config, workdir)
  out = capsys.readouterr().out
  assert "resumed from checkpoint step 125" in out
  assert [r["step"] for r in report.read_metrics(workdir)] == [125, 250]
  assert more["epoch"] == 2


def test_command_line_trains_and_reports(data_dir, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "cnn_jax.main", "train", "--config", "experiments/seed_cnn.py",
       "--workdir", str(tmp_path / "cli"), "--config.num_epochs=1",
       f"--config.data_dir={data_dir}", "--config.batch_size=64"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "final test accuracy: 0.9" in out.stdout or "final test accuracy: 0.8" in out.stdout
  with open(tmp_path / "cli" / "config.json") as f:
    assert json.load(f)["batch_size"] == 64


def test_command_line_errors_are_clear(data_dir, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "cnn_jax.main", "train", "--config", "experiments/seed_cnn.py",
       "--workdir", str(tmp_path / "bad"), "--config.dataset=no_such_dataset",
       f"--config.data_dir={data_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "Unknown dataset 'no_such_dataset'" in out.stderr
  assert "Datasets that work offline here: mnist_5k" in out.stderr


def test_unknown_model_is_an_error_before_training(seed_config, tmp_path):
  seed_config.model = "no_such_model"
  with pytest.raises(ValueError, match=r"Unknown model 'no_such_model'. Known models: fast_cnn, "
                                       r"lenet5, resnet18, .*, seed_cnn, vgg_bn, vit_tiny"):
    run.train_and_evaluate(seed_config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")


# Runs `python -m cnn_jax.main ARGS` in a process in which `import tensorflow` raises,
# as on a GPU machine without TensorFlow.
NO_TENSORFLOW = """
import importlib.abc, importlib.machinery, runpy, sys

class Refuse(importlib.abc.Loader):
  def create_module(self, spec):
    raise ImportError(f"{spec.name} is not installed here (blocked by the test)")

  def exec_module(self, module):
    pass

class NoTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return importlib.machinery.ModuleSpec(name, Refuse())
    return None

sys.meta_path.insert(0, NoTensorFlow())
try:
  import tensorflow
  raise SystemExit("tensorflow imported although blocked")
except ImportError:
  pass
sys.argv = ["cnn_jax.main", *sys.argv[1:]]
runpy.run_module("cnn_jax.main", run_name="__main__")
"""


def test_training_and_eval_need_no_tensorflow(data_dir, tmp_path):
  workdir = str(tmp_path / "no_tf")
  for args in (["train", "--config", "experiments/seed_cnn.py", "--workdir", workdir,
                "--config.num_epochs=1", f"--config.data_dir={data_dir}",
                "--config.validation_fraction=0.1"],
               ["train", "--config", "experiments/seed_cnn.py", "--workdir",
                workdir + "_streamed", "--config.num_epochs=1",
                f"--config.data_dir={data_dir}", "--config.input_pipeline=streaming",
                "--config.train_split=train[:640]"],
               ["eval", "--workdir", workdir]):
    out = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "checkpoint step 112: validation accuracy 0.9" in out.stdout
  assert "; test accuracy 0.9" in out.stdout


def test_each_dispatch_is_checked_after_the_next_is_queued_and_before_a_save(
    seed_config, tmp_path, monkeypatch):
  """The device never waits for the host's divergence check, and nothing unchecked is
  saved: 40 steps in dispatches of 5, a checkpoint every 15 steps."""
  seed_config.train_split, seed_config.steps_per_dispatch = "train[:1280]", 5
  seed_config.checkpoint_every_steps = 15
  events = []
  build = run.build_experiment

  def traced_build(config):
    exp = build(config)
    train_chunk = exp.train_chunk

    def chunk(state, arrays, index):
      events.append(("dispatch", int(state.step[0])))  # A stack of one run.
      return train_chunk(state, arrays, index)
    exp.train_chunk = chunk
    return exp

  check = run.check_divergence
  monkeypatch.setattr(run, "build_experiment", traced_build)
  monkeypatch.setattr(run, "check_divergence", lambda loss, n, f, e, first, last, s: (
      events.append(("check", first, last)), check(loss, n, f, e, first, last, s))[1])
  save = checkpoint.Checkpoints.save
  monkeypatch.setattr(checkpoint.Checkpoints, "save", lambda self, step, *a, **k: (
      events.append(("save", step)), save(self, step, *a, **k))[1])
  run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert events == [
      ("dispatch", 0), ("dispatch", 5), ("check", 0, 5), ("dispatch", 10),
      ("check", 5, 10), ("check", 10, 15), ("save", 15),
      ("dispatch", 15), ("dispatch", 20), ("check", 15, 20), ("dispatch", 25),
      ("check", 20, 25), ("check", 25, 30), ("save", 30),
      ("dispatch", 30), ("dispatch", 35), ("check", 30, 35), ("check", 35, 40),
      ("save", 40)]
