import os
import shutil

import jax
import numpy as np
import optax
import pytest

from cnn_jax import checkpoint, models, train


def make_state(seed=0):
  model = models.build_model("seed_cnn", num_classes=10)
  return train.create_train_state(model, jax.random.key(seed), (28, 28, 1), optax.adam(1e-3))


def trained_state():
  state = make_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((8, 28, 28, 1), np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  state, _ = jax.jit(train.train_step)(state, batch)
  return state


def assert_states_equal(a, b):
  assert type(a) is type(b)
  assert jax.tree.structure(a.opt_state) == jax.tree.structure(b.opt_state)
  assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = jax.numpy.asarray(x), jax.numpy.asarray(y)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(x, y)


def test_save_restore_round_trip(tmp_path):
  state = trained_state()
  ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  ckpts.save(1, state, meta={"epoch": 1, "note": "x"}, metrics={"test_accuracy": 0.5})
  ckpts.close()
  again = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  restored, meta, step, skipped = again.restore_newest_good(make_state(seed=5))
  assert (step, skipped, meta) == (1, [], {"epoch": 1, "note": "x"})
  assert_states_equal(restored, state)
  assert int(restored.step) == 1
  again.close()


def test_damaged_latest_falls_back_to_older_step(tmp_path):
  state = trained_state()
  ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"), keep_latest=3)
  ckpts.save(1, state, meta={"epoch": 1})
  ckpts.save(2, state, meta={"epoch": 2})
  ckpts.close()
  shutil.rmtree(tmp_path / "ckpt" / "2" / "state")
  again = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  restored, meta, step, skipped = again.restore_newest_good(make_state())
  assert step == 1 and meta == {"epoch": 1}
  assert [s for s, _ in skipped] == [2]
  again.close()


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  assert ckpts.restore_newest_good(make_state()) == (None, None, None, [])
  ckpts.close()


def test_all_damaged_is_an_error_not_a_fresh_start(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  ckpts.save(1, trained_state(), meta={"epoch": 1})
  ckpts.close()
  shutil.rmtree(tmp_path / "ckpt" / "1" / "state")
  again = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  with pytest.raises(checkpoint.CheckpointError, match="step 1"):
    again.restore_newest_good(make_state())
  again.close()
  assert os.path.isdir(tmp_path / "ckpt" / "1")


def test_checkpoints_from_before_the_ema_field_still_restore(tmp_path):
  from flax.training import train_state  # pylint: disable=g-import-not-at-top

  class OldState(train_state.TrainState):  # The TrainState before ema_params existed.
    batch_stats: object = None
    key: object = None
  state = trained_state()
  old = OldState(step=state.step, apply_fn=state.apply_fn, params=state.params,
                 tx=state.tx, opt_state=state.opt_state, batch_stats=None, key=state.key)
  ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  ckpts.save(1, old, meta={})
  ckpts.wait()
  restored, _ = ckpts.restore(1, make_state(seed=1))
  ckpts.close()
  assert restored.ema_params is None
  assert_states_equal(restored, state)
