"""Learning-rate schedules and the optimizer built from them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import optim
from cnn_jax import run


@pytest.mark.parametrize("name, warmup, expected", [
    ("constant", 0, {0: 1e-3, 50: 1e-3, 99: 1e-3}),
    ("constant", 10, {0: 0.0, 5: 5e-4, 10: 1e-3, 99: 1e-3}),
    ("cosine", 0, {0: 1e-3, 50: 5e-4, 100: 0.0}),
    ("cosine", 10, {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0}),
])
def test_schedule_values(name, warmup, expected):
  schedule = optim.make_schedule(name, 1e-3, 100, warmup)
  for step, lr in expected.items():
    np.testing.assert_allclose(float(schedule(step)), lr, atol=1e-9, err_msg=str(step))


def _updates(tx, steps=3):
  params = {"w": jnp.arange(4.0)}
  state = tx.init(params)
  out = []
  for i in range(steps):
    grads = {"w": jnp.sin(params["w"] + i)}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params["w"])
  return np.stack(out), state


def test_constant_without_warmup_is_the_tutorials_adam():
  ours, state = _updates(optim.make_optimizer("constant", 1e-3, 100))
  ref, ref_state = _updates(optax.adam(1e-3))
  np.testing.assert_array_equal(ours, ref)
  # Same state layout, so checkpoints from before schedules existed restore.
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)


def test_cosine_optimizer_follows_its_schedule():
  ours, _ = _updates(optim.make_optimizer("cosine", 1e-3, 4, 0), steps=4)
  schedule = optim.make_schedule("cosine", 1e-3, 4, 0)
  ref, _ = _updates(optax.adam(schedule), steps=4)
  np.testing.assert_array_equal(ours, ref)
  # The last step's learning rate is cos(3/4 * pi)-scaled, not the peak.
  assert float(schedule(3)) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(0.75 * np.pi)))


@pytest.mark.parametrize("args, message", [
    (("linear", 1e-3, 100, 0), r"Unknown lr_schedule 'linear'.*constant, cosine"),
    (("cosine", 0.0, 100, 0), r"learning_rate=0.0 must be > 0"),
    (("cosine", 1e-3, 100, 100), r"100 warm-up steps .* fewer than the run's 100 steps"),
    (("constant", 1e-3, 100, -1), r"-1 warm-up steps must be >= 0"),
])
def test_bad_schedules_say_what_to_change(args, message):
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(*args)


def test_checkpoints_from_before_schedules_match_a_constant_config():
  class Info:
    image_shape, num_classes, num_train = (28, 28, 1), 10, 4000

  from experiments import seed_cnn
  config = seed_cnn.get_config()
  current = run.fingerprint(config, Info)
  saved = {k: v for k, v in current.items() if k not in run.fingerprint_defaults()}
  run.check_fingerprint(saved, current, "wd")  # No error.
  config.lr_schedule = "cosine"
  with pytest.raises(Exception, match="lr_schedule: checkpoint has 'constant'"):
    run.check_fingerprint(saved, run.fingerprint(config, Info), "wd")
  assert run.schedule_args(config, 4000 // 32) == {
      "name": "cosine", "learning_rate": 1e-3, "total_steps": 625, "warmup_steps": 0}
