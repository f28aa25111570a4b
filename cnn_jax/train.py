"""TrainState, train_step and eval_step: pure functions, no I/O.

`train_steps` and `evaluate` run many steps in one dispatch (a `lax.scan` over batches
gathered on the devices from a set of arrays: a whole device-resident split or a
streamed chunk alike), so no host round trip happens between steps. Training batches
may be augmented (`augment(key, images)`); evaluation never is.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import optax
from flax.training import train_state

from cnn_jax import cpu
from cnn_jax.data import augment as augment_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Streams of randomness drawn at each step, under fold_in(state.key, state.step).
DROPOUT_STREAM, AUGMENT_STREAM, MIX_STREAM = 0, 1, 2


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BatchNorm statistics, the run's key and
  an exponential moving average of the params (None when not kept).

  Per-step randomness is `step_key(state, stream)`, a pure function of (key, step), so
  a resumed run draws the same numbers.
  """
  batch_stats: Any = None
  key: jax.Array | None = None
  ema_params: Any = None


def step_key(state: TrainState, stream: int) -> jax.Array:
  """The key of `stream` (DROPOUT_STREAM, AUGMENT_STREAM) at the state's step."""
  return jax.random.fold_in(jax.random.fold_in(state.key, state.step), stream)


_THREEFRY = jex.random.threefry_prng_impl
# Threefry drawing each array as a flat one, reshaped: the same bits, since threefry's
# counter is each element's row-major index. XLA:CPU compiles a draw of a 4-D
# convolution kernel slowly (LLVM unrolls its short inner loops: 2.2 s for one
# 3x3x16x16 kernel, 0.5 s flat). On a 2-core AVX2 CPU, compiling the initialisation
# took 10.4 s -> 4.6 s for ResNet-20, 5.9 -> 2.9 s for VGG-BN, 2.5 -> 1.5 s for the
# tutorial CNN. tests/test_train.py checks that the parameters are the same bits.
_FLAT_THREEFRY = jex.random.define_prng_impl(
    key_shape=_THREEFRY.key_shape, seed=_THREEFRY.seed, split=_THREEFRY.split,
    fold_in=_THREEFRY.fold_in, name="threefry2x32_flat", tag="fry_flat",
    random_bits=lambda key, bit_width, shape: _THREEFRY.random_bits(
        key, bit_width, (math.prod(shape),)).reshape(shape))


def _flat_draws(key: jax.Array) -> jax.Array:
  """`key`, drawing as `_FLAT_THREEFRY` when it is a threefry key (else unchanged)."""
  if str(jax.random.key_impl(key)) != _THREEFRY.name:
    return key
  return jax.random.wrap_key_data(jax.random.key_data(key), impl=_FLAT_THREEFRY)


def init_variables(model: nn.Module, key: jax.Array, image_shape) -> dict:
  """`model.init` with `key` for its params and dropout streams, for inputs of
  `image_shape` (H, W, C): the same variables, drawn flat (`_FLAT_THREEFRY`)."""
  key = _flat_draws(key)
  return model.init({"params": key, "dropout": key},
                    jnp.zeros((1, *image_shape), jnp.float32), train=False)


def create_train_state(model: nn.Module, key: jax.Array, image_shape, tx,
                       ema: bool = False) -> TrainState:
  """Initializes `model` for inputs of `image_shape` (H, W, C); with `ema`, the moving
  average of the params starts at the initial params. Its `apply_fn` is `model.apply`
  through `cpu.fuse` (fused CPU kernels where the program has their layers; `apply`
  itself elsewhere)."""
  init_key, run_key = jax.random.split(key)
  variables = init_variables(model, init_key, image_shape)
  params = variables["params"]
  return TrainState.create(
      apply_fn=cpu.fuse(model.apply), params=params, tx=tx,
      batch_stats=variables.get("batch_stats"), key=run_key,
      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy on integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _sums(logits, labels, losses, mask) -> Metrics:
  correct = (jnp.argmax(logits, -1) == labels) & mask
  return {"loss": jnp.sum(jnp.where(mask, losses, 0.0)),
          "correct": jnp.sum(correct).astype(jnp.float32),
          "count": jnp.sum(mask).astype(jnp.float32)}


def train_step(state: TrainState, batch: Batch, *, label_smoothing: float = 0.0,
               accum_steps: int = 1, ema_decay: float = 0.0) -> tuple[TrainState, Metrics]:
  """One optimizer step on the mean cross-entropy of `batch`.

  Args:
    state: the train state.
    batch: {'image', 'label'} and, for mixed batches, 'target' (soft labels [B, C]).
    label_smoothing: mass spread uniformly over the classes (0: the integer-label loss).
    accum_steps: split the batch into this many micro-batches whose gradients are
      averaged into one update: the update of the whole batch with the memory of one
      micro-batch. BatchNorm statistics are those of each micro-batch, in turn.
    ema_decay: keep `state.ema_params` as decay * ema + (1 - decay) * params (0: off).
  """
  dropout_key = step_key(state, DROPOUT_STREAM)
  has_stats = state.batch_stats is not None

  def loss_fn(params, batch_stats, micro):
    variables = {"params": params}
    if has_stats:
      variables["batch_stats"] = batch_stats
    logits, updates = state.apply_fn(
        variables, micro["image"], train=True, rngs={"dropout": dropout_key},
        mutable=["batch_stats"] if has_stats else [])
    logits = logits.astype(jnp.float32)
    if "target" in micro or label_smoothing:
      target = micro.get("target")
      if target is None:
        target = jax.nn.one_hot(micro["label"], logits.shape[-1])
      if label_smoothing:
        target = optax.smooth_labels(target, label_smoothing)
      losses = optax.softmax_cross_entropy(logits, target)
    else:  # The tutorial's loss, exactly.
      losses = cross_entropy(logits, micro["label"])
    return jnp.mean(losses), (logits, losses, updates.get("batch_stats", batch_stats))

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    grads, (logits, losses, batch_stats) = grad_fn(state.params, state.batch_stats, batch)
  else:
    # Strided: micro-batch j is rows j, j + k, ...; each device, holding a block of
    # rows, holds its share of every micro-batch, so none moves between devices.
    micro = jax.tree.map(lambda x: x.reshape(
        x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, m):
      grads, batch_stats = carry
      g, (logits, losses, batch_stats) = grad_fn(state.params, batch_stats, m)
      return (jax.tree.map(jnp.add, grads, g), batch_stats), (logits, losses)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats), (logits, losses) = jax.lax.scan(
        accumulate, (zeros, state.batch_stats), micro)
    grads = jax.tree.map(lambda g: g / accum_steps, grads)
    # Back to the batch's row order, for the metrics against batch["label"].
    logits = logits.swapaxes(0, 1).reshape(-1, logits.shape[-1])
    losses = losses.swapaxes(0, 1).reshape(-1)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    new_state = new_state.replace(ema_params=jax.tree.map(
        lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params,
        new_state.params))
  mask = jnp.ones_like(batch["label"], bool)
  return new_state, _sums(logits, batch["label"], losses, mask)


def eval_step(state: TrainState, batch: Batch, top_k: int = 5,
              ema: bool = False, tta: str = "none") -> Metrics:
  """Metric sums over the examples of `batch` whose `mask` is True.

  Besides loss, correct (top-1) and count: `correct_top_k` (the label among the
  `top_k` highest logits; k at most the number of classes) and `confusion`, counts
  [true class, predicted class]. `ema` evaluates the moving average of the params;
  `tta` names the views whose logits are averaged (augment.TTA_VIEWS).
  """
  variables = {"params": state.ema_params if ema else state.params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  views = augment_lib.TTA_VIEWS[tta](batch["image"])
  logits = sum(state.apply_fn(variables, v, train=False).astype(jnp.float32)
               for v in views) / len(views)
  labels, mask = batch["label"], batch["mask"]
  sums = _sums(logits, labels, cross_entropy(logits, labels), mask)
  num_classes = logits.shape[-1]
  _, top = jax.lax.top_k(logits, min(top_k, num_classes))
  in_top = jnp.any(top == labels[:, None], axis=-1) & mask
  sums["correct_top_k"] = jnp.sum(in_top).astype(jnp.float32)
  sums["confusion"] = jnp.zeros((num_classes, num_classes), jnp.float32).at[
      labels, jnp.argmax(logits, -1)].add(mask.astype(jnp.float32))
  return sums


def zero_metrics() -> Metrics:
  return {k: jnp.zeros((), jnp.float32) for k in ("loss", "correct", "count")}


def add_metrics(a: Metrics, b: Metrics) -> Metrics:
  return jax.tree.map(jnp.add, a, b)


def _gather(arrays: Batch, rows: jax.Array, batch_sharding) -> Batch:
  """The batch of `rows` of `arrays`, sharded over the mesh."""
  batch = {k: v[rows] for k, v in arrays.items()}
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  return batch


def train_steps(state: TrainState, arrays: Batch, index: jax.Array, *,
                preprocess: Callable, augment: Callable | None = None,
                mix: Callable | None = None, step_options: dict | None = None,
                batch_sharding=None) -> tuple[TrainState, Metrics]:
  """Runs `train_step` on the batch of each row of `index` in one `lax.scan`.

  Args:
    state: the train state (donate it).
    arrays: {"image": uint8 [R, H, W, C], "label": int32 [R]} on the devices: a whole
      device-resident split, or a streamed chunk (`cnn_jax.data.Chunk.arrays`).
    index: int32 [steps, batch]: the rows of `arrays` forming each step's batch,
      gathered on the devices and sharded over the mesh.
    preprocess: `preprocess(uint8 images) -> float images`.
    augment: `augment(key, images) -> images`, applied to the raw pixels with the
      step's AUGMENT_STREAM key before `preprocess`; None for none.
    mix: `mix(key, images, labels) -> (images, soft targets)` (mixup, cutmix) on the
      preprocessed images, with the step's MIX_STREAM key; None for none.
    step_options: keyword arguments of `train_step` (label_smoothing, accum_steps,
      ema_decay).
    batch_sharding: the sharding of a batch (None: leave it to XLA).
  """
  def body(carry, rows):
    state, sums = carry
    batch = _gather(arrays, rows, batch_sharding)
    image = batch["image"]
    if augment is not None:
      image = augment(step_key(state, AUGMENT_STREAM), image)
    batch = {"image": preprocess(image), "label": batch["label"]}
    if mix is not None:
      batch["image"], batch["target"] = mix(step_key(state, MIX_STREAM), batch["image"],
                                            batch["label"])
    state, metrics = train_step(state, batch, **(step_options or {}))
    return (state, add_metrics(sums, metrics)), None

  (state, sums), _ = jax.lax.scan(body, (state, zero_metrics()), index)
  return state, sums


def evaluate(state: TrainState, arrays: Batch, index: jax.Array, mask: jax.Array, *,
             preprocess: Callable, batch_sharding=None, top_k: int = 5,
             ema: bool = False, tta: str = "none") -> Metrics:
  """Metric sums of `eval_step` over the batches of `index` whose `mask` is True.

  `arrays` and `index` as in `train_steps`; `mask` bool [steps, batch]. Images go
  through `preprocess` only: evaluation is never augmented.
  """
  def step(rows, valid):
    batch = _gather(arrays, rows, batch_sharding)
    batch = {"image": preprocess(batch["image"]), "label": batch["label"], "mask": valid}
    return eval_step(state, batch, top_k, ema, tta)

  def body(sums, xs):
    return add_metrics(sums, step(*xs)), None

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                       jax.eval_shape(step, index[0], mask[0]))
  sums, _ = jax.lax.scan(body, zeros, (index, mask))
  return sums
