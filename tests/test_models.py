import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import errors
from cnn_jax import models
from cnn_jax import testing


def param_shapes(model, shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return jax.tree.map(lambda x: x.shape, variables["params"])


def test_seed_cnn_has_keras_parameter_count():
  model = models.build_model("seed_cnn", num_classes=10)
  shapes = param_shapes(model, (1, 28, 28, 1))
  assert shapes == {
      "Conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
      "Dense_0": {"kernel": (13 * 13 * 32, 64), "bias": (64,)},
      "Dense_1": {"kernel": (64, 10), "bias": (10,)},
  }
  count = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
                     )["params"]))
  assert count == 347_146


def test_seed_cnn_shapes_follow_dataset_metadata():
  model = models.build_model("seed_cnn", num_classes=7)
  x = jnp.zeros((3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (3, 7)
  # Conv 30x30 -> pool 15x15x32 -> Dense 64.
  assert variables["params"]["Dense_0"]["kernel"].shape == (15 * 15 * 32, 64)


def test_models_are_pure_functions():
  model = models.build_model("seed_cnn", num_classes=10)
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  assert jnp.array_equal(model.apply(variables, x), model.apply(variables, x))
  assert isinstance(model, nn.Module)


def test_unknown_model_lists_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9000'.*seed_cnn"):
    models.build_model("resnet9000", num_classes=10)


def test_seed_cnn_passes_check_model():
  # The 1 vs 8 devices check of seed_cnn is test_train.py's.
  report = testing.check_model("seed_cnn", (28, 28, 1), 10, expected_params=347_146,
                               checks=[c for c in testing.CHECKS if c != "devices"])
  assert report["params"] == report["gradients"] == report["jit"] == "ok"


def test_summary_counts_parameters_and_forward_flops():
  summary = models.summary(models.build_model("seed_cnn", 10), (28, 28, 1))
  assert summary["params"] == 347_146 and summary["batch_stats"] == 0
  # Multiply-adds of the conv, the two dense layers; XLA also counts bias, relu, pool.
  analytic = 2 * (26 * 26 * 32 * 9 + 5408 * 64 + 64 * 10)
  assert analytic <= summary["flops_per_image"] < 1.2 * analytic
  batched = models.summary(models.build_model("seed_cnn", 10), (28, 28, 1), batch_size=8)
  np.testing.assert_allclose(batched["flops_per_image"], summary["flops_per_image"],
                             rtol=0.01)


def test_summary_of_a_big_model_needs_no_parameters():
  summary = models.summary(models.build_model("resnet50", 1000), (224, 224, 3))
  assert summary["params"] == 25_557_032 and summary["batch_stats"] == 53_120
  assert 7e9 < summary["flops_per_image"] < 9e9  # ~4.1G multiply-adds.


EXTERNAL = '''
import flax.linen as nn

class TinyNet(nn.Module):
  """Defined outside cnn_jax."""
  num_classes: int
  features: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(self.features, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))

class NoClasses(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return x

def make_net(num_classes):
  return TinyNet(num_classes)
'''


@pytest.fixture
def outside(tmp_path, monkeypatch):
  """A package `outside_models` with a module `nets`, importable as a user's would be."""
  package = tmp_path / "outside_models"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "nets.py").write_text(EXTERNAL)
  (tmp_path / "broken_models.py").write_text("import not_installed_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  return "outside_models.nets"


def test_model_from_outside_the_package(outside):
  model = models.build_model(f"{outside}:TinyNet", num_classes=7, features=2)
  assert type(model).__name__ == "TinyNet" and model.num_classes == 7
  x = jnp.zeros((2, 6, 6, 1))
  assert model.apply(model.init(jax.random.key(0), x), x).shape == (2, 7)
  assert "seed_cnn" in models.MODELS and ":" not in "".join(models.MODELS)


@pytest.mark.parametrize("spec,message", [
    ("no_such_package.nets:Net", r"no module named 'no_such_package'"),
    ("outside_models.nope:Net", r"no module named 'outside_models.nope'"),
    ("outside_models.nets:Missing",
     r"'outside_models.nets' has no attribute 'Missing'; the linen Modules it defines: "
     r"NoClasses, TinyNet"),
    ("outside_models.nets:make_net", r"is a function, not a flax.linen.Module subclass"),
    ("outside_models.nets:NoClasses", r"the Module NoClasses, which has no num_classes"),
    ("outside_models.nets:", r"write an outside model as 'package.module:ClassName'"),
])
def test_outside_model_errors_name_what_was_not_found(outside, spec, message):
  with pytest.raises(errors.ConfigError, match=message):
    models.build_model(spec, num_classes=10)


def test_outside_module_failing_its_own_imports_keeps_its_traceback(outside):
  with pytest.raises(ModuleNotFoundError, match="not_installed_dependency"):
    models.build_model("broken_models:Net", num_classes=10)


def test_unknown_model_kwargs_are_named():
  with pytest.raises(errors.ConfigError,
                     match=r"model_kwargs has hiden, which model 'seed_cnn' does not "
                           r"take; its arguments: features, hidden\."):
    models.build_model("seed_cnn", 10, hiden=3)


def test_runner_trains_a_model_from_outside_the_package(outside, seed_config, tmp_path):
  from cnn_jax import run
  # As --config.model=outside_models.nets:TinyNet on the command line.
  seed_config.model = f"{outside}:TinyNet"
  seed_config.model_kwargs = dict(features=2)
  seed_config.train_split = "train[:256]"
  record = run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert record["epoch"] == 1 and np.isfinite(record["test_loss"])
