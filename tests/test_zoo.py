"""The model zoo: pinned parameter counts, a full cnn_jax.testing check of every family
on a small variant, and parts (norm, act, conv) chosen by config."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import errors
from cnn_jax import models
from cnn_jax import testing
from cnn_jax import train
from cnn_jax.models import components

# (name, image shape, classes, exact parameter count, published figure in millions).
# Counts include BatchNorm scale and bias, not its statistics. The CIFAR ResNets are the
# paper's option A (zero-padded identity shortcuts); 272,474, often quoted for
# ResNet-20, is option B (projections at the two stage changes: +2,752), pinned below.
PINNED = [
    ("lenet5", (32, 32, 1), 10, 61_706, 0.06),
    ("resnet20", (32, 32, 3), 10, 269_722, 0.27),  # He et al. 2016, table 6.
    ("resnet32", (32, 32, 3), 10, 464_154, 0.46),
    ("resnet56", (32, 32, 3), 10, 853_018, 0.85),
    ("resnet18", (224, 224, 3), 1000, 11_689_512, 11.69),  # torchvision's counts.
    ("resnet50", (224, 224, 3), 1000, 25_557_032, 25.56),
    ("wrn16_4", (32, 32, 3), 10, 2_748_890, 2.75),  # Zagoruyko & Komodakis: 2.7M.
    ("wrn28_10", (32, 32, 3), 10, 36_479_194, 36.48),  # 36.5M.
    ("vit_tiny", (32, 32, 3), 10, 1_806_538, 1.81),
]


@pytest.mark.parametrize("name,shape,classes,count,millions", PINNED,
                         ids=[p[0] for p in PINNED])
def test_parameter_counts_are_pinned(name, shape, classes, count, millions):
  # Abstract checks only (jax.eval_shape): cheap for the 36M-parameter WRN-28-10.
  report = testing.check_model(name, shape, classes, expected_params=count,
                               checks=testing.ABSTRACT_CHECKS)
  assert report["params"] == report["shapes"] == "ok"
  assert round(count / 1e6, 2) == millions


def test_resnet20_option_b_has_the_commonly_quoted_count():
  report = testing.check_model("resnet20", (32, 32, 3), 10, expected_params=272_474,
                               model_kwargs=dict(shortcut="projection"),
                               checks=testing.ABSTRACT_CHECKS)
  assert report["num_batch_stats"] == 1568


def test_lenet5_pads_28x28_images_to_the_published_geometry():
  report = testing.check_model("lenet5", (28, 28, 1), 10, expected_params=61_706,
                               checks=testing.ABSTRACT_CHECKS)
  assert report["num_batch_stats"] == 0


def test_vit_position_embeddings_follow_the_patch_count():
  # 49 patches + class token for 28x28x1, against 65 for 32x32x3; 16 against 48 inputs
  # per patch.
  testing.check_model("vit_tiny", (28, 28, 1), 10, expected_params=1_797_514,
                      checks=testing.ABSTRACT_CHECKS)


# Small variants of each family, same code paths, every check but "devices" (the 1 vs
# 8 devices check runs on vgg_bn in test_vgg.py and on seed_cnn in test_train.py).
# "jit" runs a step eagerly, which compiles every operation on its own: 30-50 s a model
# on a 2-core CPU. It runs on ViT's attention, LayerNorm and GELU here, and on the
# tutorial CNN (test_models.py) and VGG-BN (test_vgg.py), whose convolutions, pools,
# BatchNorm, dropout and Dense layers are the parts the CNN families here are made of
# (ResNets' residual sums and global average pool are one XLA operation each).
ALL = tuple(c for c in testing.CHECKS if c != "devices")
NO_JIT = tuple(c for c in ALL if c != "jit")
SMALL = [
    ("lenet5", (28, 28, 1), {}, NO_JIT),
    ("resnet20", (8, 8, 3), dict(depth=8, width=4), NO_JIT),
    ("resnet50", (32, 32, 3), dict(stage_sizes=(1, 1, 1, 1), width=4), NO_JIT),
    ("wrn16_4", (8, 8, 3), dict(depth=10, widen_factor=1, dropout_rate=0.3), NO_JIT),
    ("vit_tiny", (8, 8, 1), dict(dim=16, depth=2, heads=2, mlp_dim=32, dropout_rate=0.1),
     ALL),
]


@pytest.mark.parametrize("name,shape,kwargs,checks", SMALL, ids=[s[0] for s in SMALL])
def test_small_variant_passes_the_checks(name, shape, kwargs, checks):
  report = testing.check_model(name, shape, 10, model_kwargs=kwargs, checks=checks)
  # Failures raise; the report says which checks found nothing to check.
  has_bn, has_dropout = name.startswith(("resnet", "wrn")), "dropout_rate" in kwargs
  skipped = {"params"}  # No expected count given: pinned above at full size.
  if not has_bn:
    skipped.add("batch_stats")
  if not has_dropout:
    skipped.add("dropout")
  assert {c: report[c].split(":")[0] for c in checks} == {
      c: "skipped" if c in skipped else "ok" for c in checks}


# Parts by name, as config.model_kwargs gives them.
VGG_SMALL = dict(widths=(4, 8), hidden=16)
RESNET_SMALL = dict(depth=8, width=4)


def _variables(model, shape=(8, 8, 3)):
  # Jitted: run eagerly, each operation of the initialisation compiles on its own.
  return jax.jit(lambda: train.init_variables(model, jax.random.key(0), shape))()


@pytest.mark.parametrize("name,shape", [
    ("vgg_bn", (28, 28, 1)), ("resnet20", (32, 32, 3)), ("resnet50", (64, 64, 3)),
    ("wrn16_4", (32, 32, 3))])
def test_group_norm_keeps_no_statistics(name, shape):
  model = models.build_model(name, 10, norm="group")
  variables = jax.eval_shape(lambda: _variables(model, shape))
  assert "batch_stats" not in variables
  assert any("GroupNorm" in jax.tree_util.keystr(path)
             for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"]))


@pytest.mark.parametrize("name,kwargs,shape", [
    ("vgg_bn", VGG_SMALL, (28, 28, 1)), ("resnet20", RESNET_SMALL, (8, 8, 3))])
def test_group_norm_trains_a_step(name, kwargs, shape):
  model = models.build_model(name, 10, norm="group", **kwargs)
  state = train.create_train_state(model, jax.random.key(0), shape, optax.adam(1e-3))
  assert state.batch_stats is None
  new_state, metrics = jax.jit(train.train_step)(state, testing.fixed_batch(shape, 10, 4))
  assert np.isfinite(float(metrics["loss"]))
  assert new_state.batch_stats is None
  # Every parameter moves: no group of one feature normalises a layer's signal away.
  old = jax.tree_util.tree_leaves_with_path(state.params)
  unchanged = [jax.tree_util.keystr(path) for (path, a), b in
               zip(old, jax.tree.leaves(new_state.params)) if np.array_equal(a, b)]
  assert not unchanged


def test_no_norm_drops_the_norm_parameters():
  with_bn, without = (
      jax.eval_shape(lambda: _variables(models.build_model("resnet20", 10, **RESNET_SMALL,
                                                           **norm)))
      for norm in ({}, dict(norm="none")))
  assert "batch_stats" not in without
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  # Every BatchNorm had a scale and a bias per channel, as many as its statistics.
  removed = count(with_bn["params"]) - count(without["params"])
  assert removed == count(with_bn["batch_stats"])


@pytest.mark.parametrize("name,kwargs,shape", [
    ("vgg_bn", VGG_SMALL, (28, 28, 1)), ("resnet20", RESNET_SMALL, (8, 8, 3)),
    ("lenet5", {}, (28, 28, 1)), ("vit_tiny", dict(dim=16, depth=1, heads=2, mlp_dim=32),
                                  (8, 8, 1))])
def test_activation_is_a_config_value(name, kwargs, shape):
  x = jax.random.uniform(jax.random.key(1), (2, *shape))
  relu, gelu = (models.build_model(name, 10, act=act, **kwargs)
                for act in ("relu", "gelu"))
  variables = _variables(relu, shape)  # The same parameters serve both.
  assert not np.allclose(relu.apply(variables, x, train=False),
                         gelu.apply(variables, x, train=False))


def test_parts_can_be_objects_as_well_as_names():
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  by_name = models.build_model("resnet20", 10, act="gelu", norm="group", **RESNET_SMALL)
  by_object = models.build_model("resnet20", 10, act=components.ACTIVATIONS["gelu"],
                                  norm=components.NORMS["group"], **RESNET_SMALL)
  variables = _variables(by_name)
  np.testing.assert_array_equal(by_name.apply(variables, x, train=False),
                                by_object.apply(variables, x, train=False))


def test_config_model_kwargs_choose_the_parts():
  from experiments import vgg_bn_fashion_mnist
  config = vgg_bn_fashion_mnist.get_config()
  config.model_kwargs = dict(norm="group", act="gelu", **VGG_SMALL)
  model = models.build_model(config.model, 10, **config.model_kwargs)
  assert "batch_stats" not in _variables(model, (28, 28, 1))


@pytest.mark.parametrize("field,value", [
    ("norm", "grop"), ("act", "rleu")])
def test_unknown_part_names_list_the_known_ones(field, value):
  model = models.build_model("resnet20", 10, **{field: value}, **RESNET_SMALL)
  with pytest.raises(errors.ConfigError, match=rf"{field}='{value}'.*choose one of"):
    _variables(model)


@pytest.mark.parametrize("value", ["fast", "xla"])
def test_the_removed_conv_part_still_builds_for_old_configs(value):
  # Runs made before the CPU backend named conv="fast" or "xla": same parameters.
  old = models.build_model("resnet20", 10, conv=value, **RESNET_SMALL)
  new = models.build_model("resnet20", 10, **RESNET_SMALL)
  assert jax.tree.map(jnp.shape, _variables(old)) == jax.tree.map(jnp.shape, _variables(new))
  with pytest.raises(errors.ConfigError, match="does not take"):
    models.build_model("resnet20", 10, conv="cudnn", **RESNET_SMALL)


def test_resnet_depths_and_shortcuts_are_checked():
  with pytest.raises(errors.ConfigError, match=r"depth=21 is not of the form 6n \+ 2"):
    _variables(models.build_model("resnet20", 10, depth=21))
  with pytest.raises(errors.ConfigError, match=r"shortcut='B'"):
    _variables(models.build_model("resnet20", 10, shortcut="B", **RESNET_SMALL))
  with pytest.raises(errors.ConfigError, match=r"depth=12 is not of the form 6n \+ 4"):
    _variables(models.build_model("wrn16_4", 10, depth=12))
  with pytest.raises(errors.ConfigError, match=r"patch_size=3 does not divide"):
    _variables(models.build_model("vit_tiny", 10, patch_size=3), (8, 8, 1))


def test_every_registered_model_has_an_experiment_config():
  import importlib
  import pathlib
  names = set()
  for path in (pathlib.Path(__file__).parent.parent / "experiments").glob("*.py"):
    if path.stem != "__init__":
      names.add(importlib.import_module(f"experiments.{path.stem}").get_config().model)
  assert set(models.MODELS) <= names, set(models.MODELS) - names
