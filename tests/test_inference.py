"""A trained run as a function: predict on image files, export to StableHLO and a
SavedModel, each reloaded and equal to the JAX model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data, export, inference, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def predictor(trained_run):
  return inference.load(trained_run[1], "best")


@pytest.fixture(scope="module")
def test_images(trained_run):
  config = trained_run[0]
  builder = data.source.prepared_builder("mnist_5k", config.data_dir)
  return data.read_split(builder, "test[:16]")


def test_predictor_matches_the_logged_accuracy(trained_run, predictor):
  config, workdir, records = trained_run
  best = max(records, key=lambda r: r["validation_accuracy"])
  assert predictor.step == best["step"]
  images, labels = data.read_split(
      data.source.prepared_builder("mnist_5k", config.data_dir), "test")
  probs = predictor.probabilities(images)
  assert probs.shape == (1000, 10)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
  assert np.mean(probs.argmax(-1) == labels) == pytest.approx(best["test_accuracy"])


def test_predict_files_of_any_size_and_mode_and_skips_bad_ones(trained_run, predictor,
                                                               test_images, tmp_path,
                                                               capsys):
  images, labels = test_images
  paths = []
  for i in range(3):  # As stored: 28x28 grayscale.
    paths.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(images[i, ..., 0]).save(paths[-1])
  big = Image.fromarray(images[3, ..., 0]).convert("RGB").resize((56, 56), Image.NEAREST)
  paths.append(str(tmp_path / "big_rgb.jpg"))
  big.save(paths[-1], quality=100)
  paths.append(str(tmp_path / "broken.png"))
  with open(paths[-1], "wb") as f:
    f.write(b"not an image")
  results = predict.predict_files(predictor, paths, top_k=3)
  direct = predictor.probabilities(images[:3])
  for r, p in zip(results[:3], direct):
    assert [c for c, _ in r.top] == [str(i) for i in np.argsort(-p)[:3]]
    assert r.top[0][1] == pytest.approx(float(p.max()), rel=1e-5)
  assert results[3].top[0][0] == str(predictor.probabilities(images[3:4]).argmax())
  assert results[4].top is None and "cannot identify image" in results[4].error
  capsys.readouterr()
  assert predict.predict_command(trained_run[1], "best", paths, as_json=True) == 1
  out = json.loads(capsys.readouterr().out)
  assert [o["file"] for o in out] == paths and out[4]["error"] and out[0]["top"]
  assert predict.predict_command(trained_run[1], "best", paths[:4]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(f"{paths[0]}: {results[0].top[0][0]} ")


def test_export_stablehlo_reloads_and_matches(trained_run, predictor, test_images,
                                              tmp_path):
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  images, _ = test_images
  path = export.export_command(trained_run[1], "best", "stablehlo", str(tmp_path / "hlo"))
  with open(path, "rb") as f:
    restored = jax_export.deserialize(f.read())
  for n in (1, 7, 16):  # The batch size is symbolic.
    np.testing.assert_allclose(np.asarray(restored.call(images[:n])),
                               predictor.probabilities(images[:n]), rtol=1e-5, atol=1e-6)
  with open(tmp_path / "hlo" / export.LABELS_FILE) as f:
    labels = json.load(f)
  assert labels["input_shape"] == [None, 28, 28, 1] and len(labels["class_names"]) == 10
  with pytest.raises(ValueError, match="not empty"):
    export.export_command(trained_run[1], "best", "stablehlo", str(tmp_path / "hlo"))


SAVEDMODEL = """
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], model.serve(tf.constant(images)).numpy())
"""


def test_export_savedmodel_reloads_in_tensorflow_and_matches(trained_run, predictor,
                                                            test_images, tmp_path):
  images, _ = test_images
  export.export_command(trained_run[1], "best", "savedmodel", str(tmp_path / "sm"))
  np.save(tmp_path / "x.npy", images[:5])
  out = subprocess.run([sys.executable, "-c", SAVEDMODEL, str(tmp_path / "sm"),
                        str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), predictor.probabilities(images[:5]),
                             rtol=1e-5, atol=1e-6)
