"""cnn_jax.testing.check_model passes a sound model of one's own and names what is
wrong with broken ones."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import testing

# What a user writes: a model outside the package (BatchNorm and Dropout included).
OUTSIDE = '''
import flax.linen as nn
import jax.numpy as jnp

class SmallNet(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
'''


def test_a_model_from_outside_the_package_passes_every_check(tmp_path, monkeypatch):
  (tmp_path / "my_nets.py").write_text(OUTSIDE)
  monkeypatch.syspath_prepend(str(tmp_path))
  # Conv 3*3*1*4, BatchNorm 2*4, Dense 4*10 + 10.
  report = testing.check_model("my_nets:SmallNet", image_shape=(8, 8, 1), num_classes=10,
                               expected_params=36 + 8 + 50)
  assert {c: report[c] for c in testing.CHECKS} == {c: "ok" for c in testing.CHECKS}
  assert report["num_batch_stats"] == 8


class Mlp(nn.Module):
  num_classes: int
  extra_logit: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes + self.extra_logit)(x)


class NoTrainArgument(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


@jax.custom_jvp
def _double(x):
  return 2 * x


_double.defjvp(lambda primals, tangents: (_double(primals[0]), 3 * tangents[0]))


class WrongDerivative(nn.Module):
  """Its custom derivative is 3 where the function's slope is 2."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return _double(nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1))))


class Frozen(nn.Module):
  """Stops every gradient: nothing can learn."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return jax.lax.stop_gradient(nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1))))


class StatsMoveInEval(nn.Module):
  """BatchNorm that always normalises with the batch, also when evaluating."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=False)(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes)(x)


class NumpyInit(nn.Module):
  """Initialises a parameter from numpy's global generator instead of its key."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = lambda key, shape: jnp.asarray(np.random.rand(*shape))
    scale = self.param("scale", init, (1,))
    return scale * nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


@pytest.mark.parametrize("model,checks,kwargs,message", [
    (Mlp, ("params",), dict(expected_params=1),
     r"check_model\(Mlp\) params: 163 parameters, expected 1\."),
    (Mlp(num_classes=3, extra_logit=True), ("shapes",), {},
     r"shapes: train=False: logits float32\[4, 4\], expected floating \[4, 3\]"),
    (NoTrainArgument, ("shapes",), {},
     r"Models are called as __call__\(self, x, train\)"),
    (WrongDerivative, ("gradients",), {},
     r"gradients: rev-mode derivatives differ from finite differences"),
    (Frozen, ("learns",), {}, r"learns: 10 Adam steps .* not 1% lower"),
    (StatsMoveInEval, ("batch_stats",), {},
     r"batch_stats: evaluation \(train=False\) changed the statistics"),
    (NumpyInit, ("deterministic",), {}, r"deterministic: .* traced again"),
], ids=["params", "shapes", "signature", "gradients", "learns", "batch_stats",
        "deterministic"])
def test_broken_models_fail_the_check_that_catches_them(model, checks, kwargs, message):
  with pytest.raises(AssertionError, match=message):
    testing.check_model(model, (4, 4, 1), 3, checks=checks, **kwargs)


def test_checks_with_nothing_to_check_say_so():
  report = testing.check_model(Mlp, (4, 4, 1), 3, checks=("batch_stats", "dropout"))
  assert report["batch_stats"] == "skipped: no batch_stats"
  assert report["dropout"].startswith("skipped: no dropout")


def test_devices_check_skips_a_model_a_subprocess_cannot_rebuild():
  class Local(Mlp):  # Defined in a function: pickle cannot find it by name.
    pass

  report = testing.check_model(Local(num_classes=3), (4, 4, 1), 3, checks=("devices",))
  assert report["devices"].startswith("skipped: the model cannot be sent to a subprocess")


def test_arguments_are_checked():
  with pytest.raises(ValueError, match=r"Unknown checks \['speed'\]"):
    testing.check_model(Mlp, (4, 4, 1), 3, checks=("speed",))
  with pytest.raises(ValueError, match="model_kwargs go with a model name or factory"):
    testing.check_model(Mlp(num_classes=3), (4, 4, 1), 3,
                        model_kwargs=dict(extra_logit=1))


# Issue 29, item 1: a bias before BatchNorm has no true gradient; Adam had turned its
# rounding noise into learning-rate-sized steps that differed between 1 and 8 devices.
BIAS_BEFORE_BN = '''
import flax.linen as nn
import jax.numpy as jnp

class BiasBeforeBN(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(8, (3, 3))(x)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
'''


def test_devices_check_passes_a_bias_before_batchnorm(tmp_path, monkeypatch):
  (tmp_path / "bias_nets.py").write_text(BIAS_BEFORE_BN)
  monkeypatch.syspath_prepend(str(tmp_path))
  report = testing.check_model("bias_nets:BiasBeforeBN", (12, 12, 1), 10,
                               checks=("devices",))
  assert report["devices"] == "ok"


def test_devices_check_says_what_differs_and_the_likely_cause():
  w = np.zeros(3, np.float32)
  one = {"losses": [2.3, 2.2], "initial": {"['b']": w, "['w']": w},
         "params": {"['b']": w + 1e-5, "['w']": w + 0.5}}
  assert testing.compare_devices(one, one) is None
  eight = {**one, "losses": [2.3, 2.1]}
  assert "the forward pass depends on how the batch is split" in \
      testing.compare_devices(one, eight)
  eight = {**one, "params": {"['b']": w + 1e-4, "['w']": w + 0.5}}
  assert testing.compare_devices(one, eight).startswith(
      "parameter ['b'] after 2 SGD steps on 8 simulated devices differs from 1 device "
      "by up to 9e-05; it barely moves in training")
  assert "use_bias=False" in testing.compare_devices(one, eight)
  eight = {**one, "params": {"['b']": w + 1e-5, "['w']": w + 0.6}}
  assert "the gradient of this parameter depends on how the batch is split" in \
      testing.compare_devices(one, eight)
