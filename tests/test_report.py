"""What a run shows: TensorBoard events, evaluation details, figures and the report
table, and a console free of TensorFlow, TFDS and absl lines."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from cnn_jax import plots, report
from cnn_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensorboard_events_hold_the_run_scalars(trained_run):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  _, workdir, records = trained_run
  events = event_accumulator.EventAccumulator(
      os.path.join(workdir, report.TENSORBOARD_DIR), size_guidance={"scalars": 0})
  events.Reload()
  tags = set(events.Tags()["scalars"])
  assert {"train/loss", "train/accuracy", "learning_rate", "validation/accuracy",
          "test/accuracy", "test/top5_accuracy", "test/macro_f1",
          "speed/images_per_sec"} <= tags
  # Training scalars after every dispatch (50 steps), not only per epoch.
  assert [e.step for e in events.Scalars("train/loss")] == [50, 56, 106, 112]
  test = {e.step: e.value for e in events.Scalars("test/accuracy")}
  assert test == {r["step"]: pytest.approx(r["test_accuracy"]) for r in records}
  assert "config" in " ".join(events.Tags()["tensors"])  # The config as text.


def test_each_evaluation_keeps_its_confusion_matrix(trained_run):
  _, workdir, records = trained_run
  for name in ("validation", "test"):
    with open(os.path.join(workdir, "evals", name, f"{records[-1]['step']}.json")) as f:
      detail = json.load(f)
    matrix = detail["confusion"]
    assert len(matrix) == 10 and detail["class_names"] == [str(i) for i in range(10)]
    correct = sum(matrix[i][i] for i in range(10))
    assert correct / detail["count"] == pytest.approx(records[-1][f"{name}_accuracy"])
  assert sum(map(sum, matrix)) == 1000


def test_report_writes_figures_and_a_table(trained_run, tmp_path):
  _, workdir, records = trained_run
  out = plots.report_command([workdir], str(tmp_path / "report"))
  files = sorted(os.listdir(out))
  assert files == ["confusion.png", "curves.png", "misclassified.png", "report.md"]
  for f in files[:-1]:
    with open(os.path.join(out, f), "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  best = max(records, key=lambda r: r["validation_accuracy"])
  table = open(os.path.join(out, "report.md")).read()
  assert (f"| best validation_accuracy | {best['step']} | "
          f"{best['validation_accuracy']:.4f} | {best['test_accuracy']:.4f} |") in table
  found, wrong, total = plots.misclassified(workdir, best["step"], limit=3)
  assert total == 1000 and wrong == round((1 - best["test_accuracy"]) * 1000)
  assert len(found) == 3 and all(t != p for _, t, p, _ in found)


def test_the_console_has_only_our_lines(tmp_path):
  # A fresh data_dir: the embedded dataset is prepared (TensorFlow, TFDS) in this run.
  out = subprocess.run(
      [sys.executable, "-m", "cnn_jax.main", "train", "--config", "experiments/seed_cnn.py",
       "--workdir", str(tmp_path / "run"), f"--config.data_dir={tmp_path / 'tfds'}",
       "--config.num_epochs=1", "--config.train_split=train[:640]"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stderr == ""
  lines = out.stdout.splitlines()
  assert lines[0].startswith("Preparing mnist_5k 1.0.0 in ")
  ours = ("Preparing ", "Cached the decoded ", "seed_cnn: 347,146 parameters, ",
          "seed_cnn on mnist_5k", "epoch ", "final ")
  assert all(line.startswith(ours) for line in lines), lines
  assert any(line.startswith(ours[2]) and line.endswith(" MFLOPs forward per image")
             for line in lines), lines


def test_the_run_records_its_model_size_and_flops(trained_run):
  from cnn_jax import models
  _, workdir, _ = trained_run
  recorded = report.read_json(workdir, report.MODEL_FILE)
  assert recorded["model"] == "seed_cnn"
  assert recorded["params"] == 347_146 and recorded["batch_stats"] == 0
  expected = models.summary(models.build_model("seed_cnn", 10), (28, 28, 1))
  assert recorded["flops_per_image"] == expected["flops_per_image"] > 0


def test_tensorboard_holds_the_config_as_hyperparameters(trained_run):
  """Issue 29, item 2: tensorboardX's add_hparams wrote them to a second file of the
  same name, which replaced the first: no hparams plugin data in the run."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  config, workdir, _ = trained_run
  folder = os.path.join(workdir, report.TENSORBOARD_DIR)
  hparams, metrics, tags = {}, [], set()
  for name in os.listdir(folder):
    for event in event_file_loader.EventFileLoader(os.path.join(folder, name)).Load():
      for value in event.summary.value:
        tags.add(value.tag)
        if value.metadata.plugin_data.plugin_name == "hparams":
          data = plugin_data_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          hparams.update(data.session_start_info.hparams)
          metrics += [m.name.tag for m in data.experiment.metric_infos]
  assert hparams["learning_rate"].number_value == pytest.approx(config.learning_rate)
  assert hparams["model"].string_value == "seed_cnn"
  assert hparams["evals.test.split"].string_value == "test"
  assert hparams["validation_fraction"].number_value == pytest.approx(0.1)
  assert {"train/loss", "validation/accuracy", "test/accuracy"} <= set(metrics)
  assert {"train/loss", "config/text_summary"} <= tags  # All in the run's one file.


def _two_runs_of_one_name(workdir, tmp_path):
  """Copies of one run as a sweep lays them out: lr=0.1/seed0, lr=0.01/seed0."""
  runs = [str(tmp_path / "sweep" / lr / "seed0") for lr in ("lr=0.1", "lr=0.01")]
  for run in runs:
    shutil.copytree(workdir, run)
  return runs


def test_report_tells_runs_of_one_base_name_apart(trained_run, tmp_path):
  """Issue 29, item 4: lr=0.1/seed0 and lr=0.01/seed0 wrote one set of figures (the
  second over the first) and two table rows called seed0."""
  runs = _two_runs_of_one_name(trained_run[1], tmp_path)
  out = plots.report_command(runs, str(tmp_path / "report"))
  assert sorted(os.listdir(out)) == sorted(
      f"{run}_{figure}.png" for run in ("lr=0.1_seed0", "lr=0.01_seed0")
      for figure in ("curves", "confusion", "misclassified")) + ["report.md"]
  table = open(os.path.join(out, "report.md")).read()
  assert "| lr=0.1/seed0 |" in table and "| lr=0.01/seed0 |" in table
  assert plots.run_labels(["/a/x/seed0", "/b/y/seed0", "/c/seed1"]) == [
      "x/seed0", "y/seed0", "c/seed1"]


def test_report_refuses_a_folder_that_is_not_a_run_writing_nothing(trained_run, tmp_path,
                                                                   cli):
  """Issue 29, item 5: a sweep root or a typo gave a FileNotFoundError traceback and
  created <folder>/report/."""
  runs = _two_runs_of_one_name(trained_run[1], tmp_path)
  root = str(tmp_path / "sweep")
  with pytest.raises(ConfigError, match=r"is not a run \(no config.json\); it holds 2 "
                     r"run\(s\), e.g. lr=0.01/seed0: give one"):
    plots.report_command([root])
  with pytest.raises(ConfigError, match=r"typo is not a folder \(no such path\)"):
    plots.report_command([str(tmp_path / "typo")])
  with pytest.raises(ConfigError, match=r"is not a folder \(it is a file\)"):
    plots.report_command([os.path.join(runs[0], "config.json")])
  with pytest.raises(ConfigError, match="a run is given twice"):
    plots.report_command([runs[0], runs[0]])
  assert sorted(os.listdir(root)) == ["lr=0.01", "lr=0.1"]  # No report/ made.
  assert not os.path.exists(tmp_path / "typo")
  out = cli("report", root, cwd=str(tmp_path))  # The command line: one line, exit 2.
  assert out.returncode == 2 and out.stderr.startswith("error: report: ")
  assert len(out.stderr.strip().splitlines()) == 1


def test_one_epoch_curves_plot_every_dispatch(trained_run, tmp_path, monkeypatch):
  """Issue 29, item 14: a run's curves were single dots per epoch; the training loss
  and accuracy of every dispatch (TensorBoard's) are plotted too."""
  _, workdir, records = trained_run
  assert [s for s, _ in report.read_scalars(workdir, "train/loss")] == [50, 56, 106, 112]
  plotted = []
  plt = plots._pyplot()
  original = plt.Axes.plot
  monkeypatch.setattr(plt.Axes, "plot", lambda ax, *a, **k: plotted.append(
      (k.get("label"), list(a[0]))) or original(ax, *a, **k))
  plots.plot_curves(workdir, str(tmp_path / "curves.png"))
  per_epoch = 112 / 2
  assert plotted[0] == ("train (each dispatch)",
                        pytest.approx([50 / per_epoch, 1, 106 / per_epoch, 2]))
  assert ("train", [1, 2]) in plotted and ("test", [1, 2]) in plotted
