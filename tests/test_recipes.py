"""Training recipes: optimizers by name with masked weight decay and clipping, label
smoothing, mixup and cutmix, gradient accumulation and an EMA of the weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models, optim, report, run, train
from cnn_jax.data import augment
from tests.test_resume import assert_trees_equal, final_params
from tests.test_train import fixed_batch, make_state


def vgg_params():
  model = models.build_model("vgg_bn", num_classes=10)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                           train=False))["params"]


def test_weight_decay_mask_leaves_biases_and_norms_alone():
  mask = optim.decay_mask(vgg_params())
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat and all(v == name.endswith("kernel") for name, v in flat.items())
  assert sum(flat.values()) == 6  # 4 convolutions and 2 dense kernels.


@pytest.mark.parametrize("name", ["adamw", "sgd", "adam"])
def test_decay_touches_only_masked_weights(name):
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  tx = optim.make_optimizer("constant", 0.1, 100, optimizer=name, weight_decay=0.5)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert np.all(np.asarray(updates["Dense_0"]["kernel"]) < 0)  # Shrinks the kernel...
  np.testing.assert_array_equal(updates["Dense_0"]["bias"], 0)  # ...not the bias.


def test_optimizers_by_name_and_clipping():
  params = {"w": jnp.ones(4)}
  big = {"w": jnp.full(4, 1e6)}
  sgd = optim.make_optimizer("constant", 1.0, 100, optimizer="sgd",
                             optimizer_kwargs={"momentum": 0.0}, grad_clip_norm=2.0)
  updates, _ = sgd.update(big, sgd.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(2.0, rel=1e-5)
  nesterov = optim.make_optimizer("cosine", 0.1, 100, optimizer="sgd",
                                  optimizer_kwargs={"nesterov": True})
  nesterov.update(big, nesterov.init(params), params)
  with pytest.raises(Exception, match="Unknown optimizer 'lamb'"):
    optim.make_optimizer("constant", 0.1, 100, optimizer="lamb")
  with pytest.raises(Exception, match="do not fit 'sgd'"):
    optim.make_optimizer("constant", 0.1, 100, optimizer="sgd", optimizer_kwargs={"b1": 0})


def test_label_smoothing_is_the_smoothed_cross_entropy():
  state, batch = make_state(tx=optax.sgd(0.0)), fixed_batch(8)
  _, smoothed = train.train_step(state, batch, label_smoothing=0.1)
  logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
  target = optax.smooth_labels(jax.nn.one_hot(batch["label"], 10), 0.1)
  expected = optax.softmax_cross_entropy(logits, target).sum()
  np.testing.assert_allclose(smoothed["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_conserve_label_mass_and_follow_the_key(mixup, cutmix):
  images = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  mix = jax.jit(augment.make_mix(10, mixup, cutmix))
  out, targets = mix(jax.random.key(1), images, labels)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  again, targets_again = mix(jax.random.key(1), images, labels)
  np.testing.assert_array_equal(out, again)
  np.testing.assert_array_equal(targets, targets_again)
  assert not np.array_equal(out, mix(jax.random.key(2), images, labels)[0])
  own = np.asarray(targets)[np.arange(16), np.asarray(labels)]
  if not mixup:  # Cutmix: the own label's weight is the share of pixels kept.
    kept = np.mean(np.asarray(out) == np.asarray(images), axis=(1, 2, 3))
    np.testing.assert_allclose(own, kept, atol=1e-6)


def test_accumulated_micro_batches_make_the_update_of_the_whole_batch():
  batch = fixed_batch(32)
  sgd = optax.sgd(0.1)
  whole, m_whole = jax.jit(train.train_step)(make_state(tx=sgd), batch)
  accumulated, m_acc = jax.jit(functools.partial(train.train_step, accum_steps=4))(
      make_state(tx=sgd), batch)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m_whole["loss"], m_acc["loss"], rtol=1e-5)
  assert float(m_acc["count"]) == 32 and int(accumulated.step) == 1


def test_ema_is_kept_in_the_state():
  model = models.build_model("seed_cnn", num_classes=10)
  state = train.create_train_state(model, jax.random.key(0), (28, 28, 1),
                                   optax.adam(1e-3), ema=True)
  step = jax.jit(functools.partial(train.train_step, ema_decay=0.9))
  expected = state.params
  for i in range(3):
    state, _ = step(state, fixed_batch(seed=i))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, expected, state.params)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_a_recipe_run_resumes_bitwise_and_evaluates_the_ema(seed_config, tmp_path):
  seed_config.train_split = "train[:640]"
  seed_config.num_epochs = 2
  seed_config.steps_per_dispatch = 5
  seed_config.optimizer, seed_config.weight_decay = "adamw", 0.05
  seed_config.grad_clip_norm, seed_config.label_smoothing = 1.0, 0.1
  seed_config.mixup_alpha, seed_config.cutmix_alpha = 0.2, 1.0
  seed_config.grad_accum_steps, seed_config.ema_decay = 2, 0.9
  whole = run.train_and_evaluate(seed_config, str(tmp_path / "whole"))
  assert {"test_ema_accuracy", "test_accuracy"} <= set(whole)
  assert whole["test_ema_accuracy"] != whole["test_accuracy"]
  seed_config.num_epochs = 1
  run.train_and_evaluate(seed_config, str(tmp_path / "resumed"))
  seed_config.num_epochs = 2  # Constant schedule: more epochs are allowed.
  resumed = run.train_and_evaluate(seed_config, str(tmp_path / "resumed"))
  assert_trees_equal(final_params(tmp_path / "resumed")[1],
                     final_params(tmp_path / "whole")[1])
  assert resumed["test_ema_accuracy"] == whole["test_ema_accuracy"]
  assert [r["epoch"] for r in report.read_metrics(str(tmp_path / "resumed"))] == [1, 2]
  seed_config.optimizer = "sgd"
  with pytest.raises(Exception, match="optimizer: checkpoint has 'adamw', config has 'sgd'"):
    run.train_and_evaluate(seed_config, str(tmp_path / "resumed"))
