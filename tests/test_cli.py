"""The command line's edges (issue 29): each mistake is one line on stderr naming what
was wrong and how to fix it, exit status 2, nothing created or changed on disk."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CONFIG = os.path.join(ROOT, "experiments", "seed_cnn.py")


def one_line_error(out, starts: str) -> None:
  assert out.returncode == 2, out.stderr
  assert out.stderr.startswith(f"error: {starts}"), out.stderr
  assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_missing_config_file_with_an_override(cli, tmp_path):
  """Item 3: with any --config.x= override it was a 57-line traceback, exit 1."""
  for extra in ([], ["--config.num_epochs=1"], ["--config.model_kwargs.hidden=8"]):
    out = cli("train", "--config", "no_such.py", "--workdir", "run", *extra,
              cwd=str(tmp_path))
    one_line_error(out, f"--config no_such.py: no such file (relative paths are read "
                   f"from {tmp_path}).")
    assert len(out.stderr.splitlines()) == 1
  assert os.listdir(tmp_path) == []


def test_a_mistyped_field_names_it_and_the_nearest_one(cli, tmp_path):
  """Item 7: the message was mangled ('\\\\\\'num_epoch\\\\\\'\\\\nDid you mean...')."""
  out = cli("train", "--config", CONFIG, "--workdir", str(tmp_path / "run"),
            "--config.num_epoch=1")
  one_line_error(out, "--config.num_epoch: the config has no field 'num_epoch'; did you "
                 "mean 'num_epochs'? (./run.sh help lists each command's flags; config "
                 "fields are those of cnn_jax/schema.py)\n")
  out = cli("train", "--config", CONFIG, "--workdir", str(tmp_path / "run"),
            "--config.evals.tset.split=test")
  one_line_error(out, "--config.evals.tset.split: the config has no field 'tset'; did "
                 "you mean 'test'? (")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["trian"], "unknown command 'trian'; did you mean 'train'? Commands: train, eval, "
                "report, predict, export, sweep, prepare"),
    (["evla", "--workdir", "w"], "unknown command 'evla'; did you mean 'eval'?"),
    (["fly"], "unknown command 'fly'. Commands: train,"),
    (["train", "--config", CONFIG, "--workdir", "w", "num_epochs=1"],
     "train takes no arguments besides flags (got 'num_epochs=1'; a flag needs its --)"),
    (["prepare"], "prepare takes 1 argument besides flags (got none; a flag needs its --)"),
    (["eval"], "eval needs --workdir: eval --workdir DIR"),
    (["sweep", "--workdir", "w"], "sweep needs --config and --workdir"),
])
def test_mistyped_commands_and_arguments(cli, tmp_path, args, message):
  """Item 8: a mistyped subcommand printed 63 lines of help, exit 1, never naming it."""
  out = cli(*args, cwd=str(tmp_path))
  one_line_error(out, message)
  assert len(out.stderr.splitlines()) == 1
  assert os.listdir(tmp_path) == []


def test_predict_without_files_or_with_top_k_0(cli, trained_run):
  """Item 9: no files raised a ValueError traceback; --top_k 0 printed empty lines."""
  workdir = trained_run[1]
  before = sorted(os.listdir(workdir))
  one_line_error(cli("predict", "--workdir", workdir), "predict needs image files")
  one_line_error(cli("predict", "--workdir", workdir, "--top_k", "0", "x.png"),
                 "--top_k=0: give the number of classes to show per image, 1 or more.")
  assert sorted(os.listdir(workdir)) == before


def test_export_savedmodel_prints_only_its_own_line(cli, trained_run, tmp_path):
  """Item 10: four TensorFlow/absl lines (jax2tf imported TensorFlow before its
  logging was set)."""
  # As a user's shell has it: without the settings this process's own TensorFlow
  # import (preparing the test data) left in its environment.
  out = cli("export", "--workdir", trained_run[1], "--format", "savedmodel", "--out",
            str(tmp_path / "sm"), env={"TF_CPP_MIN_LOG_LEVEL": None,
                                       "TF_ENABLE_ONEDNN_OPTS": None})
  assert out.returncode == 0 and out.stderr == ""
  assert out.stdout == (f"exported step {trained_run[2][-1]['step']} of "
                        f"{trained_run[1]} as savedmodel to {tmp_path / 'sm'}\n")


def test_model_kwargs_overrides_where_the_experiment_lists_none(cli, data_dir, tmp_path):
  """Item 11: seed_cnn's model_kwargs is {}: --config.model_kwargs.hidden=8 said 'no
  field'; only the dict form worked. Each key is now read as a literal and checked by
  the model (known argument, type)."""
  run = str(tmp_path / "run")
  common = ["train", "--config", CONFIG, "--workdir", run, f"--config.data_dir={data_dir}"]
  one_line_error(cli(*common, "--config.model_kwargs.hiden=8"),
                 "config.model_kwargs has hiden, which model 'seed_cnn' does not take; "
                 "its arguments: features, hidden.")
  one_line_error(cli(*common, "--config.model_kwargs.hidden=abc"),
                 "config.model_kwargs.hidden='abc': model 'seed_cnn' takes an integer "
                 "there (default 64).")
  one_line_error(cli(*common, "--config.optimizer_kwargs.b1=high"),
                 "config.optimizer_kwargs")
  assert not os.path.exists(run)
  out = cli(*common, "--config.model_kwargs.hidden=8", "--config.optimizer_kwargs.b1=0.8",
            "--config.train_split=train[:64]", "--config.num_epochs=1",
            "--config.test_split=test[:64]")
  assert out.returncode == 0, out.stderr
  saved = json.load(open(os.path.join(run, "config.json")))
  assert saved["model_kwargs"] == {"hidden": 8}
  assert saved["optimizer_kwargs"] == {"b1": 0.8}
  # Conv 3*3*32 + 32, Dense 13*13*32*8 + 8, Dense 8*10 + 10.
  assert json.load(open(os.path.join(run, "model.json")))["params"] == 320 + 43_272 + 90


def test_unknown_dataset_is_refused_before_tensorflow_or_the_workdir(cli, tmp_path):
  """Item 6: 'mnist5k' was refused after 7.5 s (TensorFlow imported), leaving .lock and
  checkpoints/ in the new workdir."""
  out = cli("train", "--config", CONFIG, "--workdir", str(tmp_path / "run"),
            "--config.dataset=mnist5k")
  one_line_error(out, "Unknown dataset 'mnist5k': TFDS has no dataset of that name; did "
                 "you mean 'mnist_5k'?")
  one_line_error(cli("train", "--config", CONFIG, "--workdir", str(tmp_path / "run"),
                     f"--config.dataset=folder:{tmp_path / 'nope'}"),
                 f"config.dataset='folder:{tmp_path / 'nope'}': image folder")
  assert os.listdir(tmp_path) == []
  check = subprocess.run(
      [sys.executable, "-c", "import sys\nfrom cnn_jax.data import source\n"
       "try:\n  source.check_dataset('mnist5k', None)\nexcept source.DatasetError:\n"
       "  print('tensorflow' in sys.modules)"], capture_output=True, text=True,
      cwd=ROOT, timeout=120)
  assert check.stdout == "False\n", check.stderr  # TFDS's names need no TensorFlow.


def test_run_sh_with_flags_only_is_the_main_job(tmp_path):
  """Item 13: ./run.sh --config.num_epochs=1 was taken as a subcommand ('Unknown
  command line flag')."""
  out = subprocess.run([os.path.join(ROOT, "run.sh"), "--config.batch_size=0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
  one_line_error(out, "config.batch_size=0 is not allowed")
  assert os.listdir(tmp_path) == []


# More mistakes a new user makes (issue 29: twenty more, each in the README's table).
@pytest.mark.parametrize("config_text, message", [
    ("hi there\n", "line 1: SyntaxError"),
    ("hi\n", "line 1: NameError: name 'hi' is not defined"),
    ("import no_such_module\ndef get_config():\n  return None\n",
     "line 1: ModuleNotFoundError: No module named 'no_such_module'"),
    ("x = 1\n", "it defines no get_config()"),
    ("def get_config():\n  return {'model': 'seed_cnn'}\n",
     "get_config() returned a dict, not an ml_collections.ConfigDict"),
])
def test_a_config_file_that_gives_no_config(cli, tmp_path, config_text, message):
  (tmp_path / "exp.txt").write_text(config_text)
  out = cli("train", "--config", "exp.txt", "--workdir", "run", "--config.seed=1",
            cwd=str(tmp_path))
  one_line_error(out, f"--config exp.txt")
  assert message in out.stderr and len(out.stderr.splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == ["exp.txt"]


@pytest.mark.parametrize("args, message", [
    (["train", "--config", CONFIG, "--workdri", "w"],
     "Unknown command line flag 'workdri'. Did you mean: workdir ?"),
    (["train", "--config", CONFIG, "--workdir", "w", "--config.learning_rate=1e-3,"],
     "flag --config.learning_rate=1e-3,: could not convert string to float"),
    (["train", "--config", CONFIG, "--workdir", "w", "--local_processes", "-1"],
     "flag --local_processes=-1: -1 is not a positive integer"),
    (["predict", "--workdir", "w", "--top_k=abc", "x.png"], "flag --top_k=abc: invalid"),
    (["export", "--workdir", "w", "--format", "onnx", "--out", "e"],
     "flag --format=onnx: value should be one of <stablehlo|savedmodel>"),
    (["eval", "--workdir", "sweep"], "{tmp}/sweep is not a run (no config.json); it "
                                     "holds 1 run(s), e.g. lr=1/seed0: give one"),
    (["eval", "--workdir", "sweep/lr=1/seed0/config.json"],
     "{tmp}/sweep/lr=1/seed0/config.json is not a folder (it is a file)"),
])
def test_flags_of_every_command(cli, tmp_path, args, message):
  """A typo in a flag, a value of the wrong type, a path that is a file, a folder that
  is not a run: one line (with the hint on it), exit 2, nothing made."""
  os.makedirs(tmp_path / "sweep" / "lr=1" / "seed0")
  (tmp_path / "sweep" / "lr=1" / "seed0" / "config.json").write_text("{}")
  out = cli(*args, cwd=str(tmp_path))
  one_line_error(out, message.format(tmp=tmp_path))
  assert len(out.stderr.splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == ["sweep"]


def test_outputs_that_are_files(trained_run, tmp_path):
  from cnn_jax import export, plots  # pylint: disable=g-import-not-at-top
  from cnn_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  (tmp_path / "taken").write_text("mine")
  with pytest.raises(ConfigError, match="--out .*taken is a file; give a new or empty"):
    export.export_command(trained_run[1], "latest", "stablehlo", str(tmp_path / "taken"))
  with pytest.raises(ConfigError, match="report: --out .*taken is a file"):
    plots.report_command([trained_run[1]], str(tmp_path / "taken"))
  assert (tmp_path / "taken").read_text() == "mine"
