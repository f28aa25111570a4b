"""Checks for anyone testing a model of their own: one call, cheap, with clear failures.

  from cnn_jax import testing

  def test_my_net():
    report = testing.check_model("my_models.net:MyNet", image_shape=(28, 28, 1),
                                 num_classes=10, expected_params=123_456)

Each check raises AssertionError naming the model and what went wrong; the return
value is a report {check: "ok" | "skipped: why"} plus the parameter counts
("num_params", "num_batch_stats"). The checks run the model as the project's runner
does (`cnn_jax.train`), on a few images.
"""

import functools
import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import test_util

from cnn_jax import cpu
from cnn_jax import models
from cnn_jax import train

# In order; the first two only trace the model (jax.eval_shape), so they suit models of
# any size: ABSTRACT_CHECKS.
CHECKS = ("shapes", "params", "deterministic", "jit", "gradients", "learns",
          "batch_stats", "dropout", "devices")
ABSTRACT_CHECKS = ("shapes", "params")


def _build(model, num_classes: int, model_kwargs: dict) -> nn.Module:
  if isinstance(model, str):  # A MODELS name or "module:attr".
    return models.build_model(model, num_classes, **model_kwargs)
  if isinstance(model, nn.Module):
    if model_kwargs:
      raise ValueError("model_kwargs go with a model name or factory, not an instance.")
    return model
  return model(num_classes=num_classes, **model_kwargs)  # A class or factory.


def fixed_batch(image_shape: Sequence[int], num_classes: int, n: int, seed: int = 0):
  """`n` random images in [0, 1) and labels: {'image', 'label'}."""
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, *image_shape), np.float32)),
          "label": jnp.asarray(rng.integers(0, num_classes, n), jnp.int32)}


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


class _Checker:
  """The model, its inputs, and one check per method; `fail` raises AssertionError."""

  def __init__(self, model: nn.Module, label: str, image_shape, num_classes, batch_size,
               seed, expected_params, grad_tolerance, jit_rtol):
    self.model, self.label = model, label
    self.image_shape, self.num_classes = tuple(image_shape), num_classes
    self.batch = fixed_batch(image_shape, num_classes, batch_size, seed)
    self.key = jax.random.key(seed)
    self.expected_params, self.grad_tolerance = expected_params, grad_tolerance
    self.jit_rtol = jit_rtol
    # One compiled initialiser per optimizer.
    self._create = {name: jax.jit(functools.partial(
        train.create_train_state, model, image_shape=self.image_shape, tx=tx))
                    for name, tx in (("adam", optax.adam(1e-3)), ("sgd", optax.sgd(0.1)))}
    self.step = jax.jit(train.train_step)

  def fail(self, check: str, message: str):
    raise AssertionError(f"check_model({self.label}) {check}: {message}")

  def state(self, tx: str = "adam", key=None) -> train.TrainState:
    """A fresh train state with Adam 1e-3 or SGD 0.1 (`tx`)."""
    return self._create[tx](self.key if key is None else key)

  @functools.cached_property
  def variables(self):
    """The model's variables, abstract (shapes and dtypes only)."""
    try:
      return jax.eval_shape(lambda: self.model.init(
          {"params": self.key, "dropout": self.key},
          jnp.zeros((1, *self.image_shape)), train=False))
    except TypeError as e:
      self.fail("shapes", f"init(rngs, images, train=False) failed: {e}. Models are "
                "called as __call__(self, x, train).")

  def shapes(self) -> str:
    x = jax.ShapeDtypeStruct((len(self.batch["label"]), *self.image_shape), jnp.float32)
    want = (x.shape[0], self.num_classes)
    for train_mode in (False, True):
      try:
        out, _ = jax.eval_shape(
            lambda v, x, t=train_mode: self.model.apply(
                v, x, train=t, rngs={"dropout": self.key}, mutable=["batch_stats"]),
            self.variables, x)
      except TypeError as e:
        self.fail("shapes", f"apply(variables, images, train={train_mode}) failed: {e}. "
                  "Models are called as __call__(self, x, train).")
      if out.shape != want or not jnp.issubdtype(out.dtype, jnp.floating):
        self.fail("shapes", f"train={train_mode}: logits {out.dtype}{list(out.shape)}, "
                  f"expected floating {list(want)} for {x.shape[0]} images.")
    return "ok"

  def params(self) -> str:
    count, expected = _count(self.variables["params"]), self.expected_params
    if expected is not None and count != expected:
      self.fail("params", f"{count:,} parameters, expected {expected:,}.")
    return "ok" if expected is not None else "skipped: no expected_params given"

  def deterministic(self) -> str:
    # Traced anew: randomness drawn while tracing (numpy's, Python's) shows up here.
    retraced = jax.jit(functools.partial(
        train.create_train_state, self.model, image_shape=self.image_shape,
        tx=optax.adam(1e-3)))
    state = self.state()
    if not _equal((state.params, state.batch_stats),
                  (lambda s: (s.params, s.batch_stats))(retraced(self.key))):
      self.fail("deterministic", "the same seed gave other initial variables when traced "
                "again: does the model draw randomness other than from its rngs (numpy, "
                "Python's random)?")
    (a, metrics_a), (b, metrics_b) = (self.step(state, self.batch) for _ in range(2))
    if (not _equal(a.params, b.params)
        or float(metrics_a["loss"]) != float(metrics_b["loss"])):
      self.fail("deterministic", "the same step from the same state gave other bits.")
    if _equal(state.params, self.state(key=jax.random.fold_in(self.key, 1)).params):
      self.fail("deterministic", "another seed gave the same initial parameters.")
    return "ok"

  def jit(self) -> str:
    # Plain SGD: Adam's first step, lr * g / (|g| + eps), would turn the rounding of
    # a near-zero gradient into a visible change.
    s1, m1 = self.step(self.state("sgd"), self.batch)
    with jax.disable_jit():
      s2, m2 = train.train_step(self.state("sgd"), self.batch)
    try:
      for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=self.jit_rtol, atol=1e-6)
      np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=self.jit_rtol)
    except AssertionError as e:
      self.fail("jit", f"a jitted step differs from the same step run eagerly:{e}")
    return "ok"

  def gradients(self) -> str:
    # After one step: at initialisation, zero-initialised scales (as in residual
    # blocks) put ReLUs exactly on their kink, where there is no derivative to check.
    state, _ = self.step(self.state(), self.batch)
    stats = state.batch_stats
    # Float64 (inside a context: nothing global changes) makes finite differences
    # precise enough to compare in both modes, forward as well as reverse.
    with jax.enable_x64(True):
      to64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
      params, image = to64(state.params), jnp.asarray(self.batch["image"], jnp.float64)
      stats = to64(stats)

      @jax.jit
      def loss(params):
        variables = {"params": params}
        if stats is not None:
          variables["batch_stats"] = stats
        logits, _ = self.model.apply(variables, image, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": self.key})
        return jnp.mean(train.cross_entropy(logits, self.batch["label"]))

      grads = jax.grad(loss)(params)
      if not all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)):
        self.fail("gradients", "some gradients are not finite.")
      for mode in ("rev", "fwd"):
        try:
          # A small step: a larger one crosses the kinks of ReLU and max-pool.
          test_util.check_grads(loss, (params,), order=1, modes=(mode,), eps=1e-8,
                                atol=self.grad_tolerance, rtol=self.grad_tolerance)
        except AssertionError as e:
          self.fail("gradients", f"{mode}-mode derivatives differ from finite "
                    f"differences (in float64: a model fixing float32 fails here):\n{e}")
    return "ok"

  def learns(self, steps: int = 10) -> str:
    state = self.state()
    variables = lambda s: ({"params": s.params} if s.batch_stats is None else
                           {"params": s.params, "batch_stats": s.batch_stats})

    @jax.jit
    def loss(state):  # Training mode, with the same dropout masks before and after.
      logits, _ = self.model.apply(variables(state), self.batch["image"], train=True,
                                   rngs={"dropout": self.key}, mutable=["batch_stats"])
      return jnp.mean(train.cross_entropy(logits, self.batch["label"]))

    before = float(loss(state))
    for _ in range(steps):
      state, _ = self.step(state, self.batch)
    after = float(loss(state))
    if not after < 0.99 * before:  # Deterministic here: any real descent shows.
      self.fail("learns", f"{steps} Adam steps (lr 1e-3) on one batch took its loss from "
                f"{before:.4f} to {after:.4f}, not 1% lower.")
    return "ok"

  def batch_stats(self) -> str:
    state = self.state()
    if state.batch_stats is None:
      return "skipped: no batch_stats"
    new, _ = self.step(state, self.batch)
    unchanged = jax.tree_util.tree_map_with_path(
        lambda path, a, b: jax.tree_util.keystr(path) if np.array_equal(a, b) else None,
        state.batch_stats, new.batch_stats)
    still = jax.tree.leaves(unchanged)  # None (a statistic that moved) is no leaf.
    if still:
      self.fail("batch_stats", f"a training step left {', '.join(still)} unchanged.")
    variables = {"params": new.params, "batch_stats": new.batch_stats}
    apply = jax.jit(functools.partial(self.model.apply, train=False,
                                      mutable=["batch_stats"]))
    (a, stats), (b, _) = apply(variables, self.batch["image"]), apply(variables,
                                                                      self.batch["image"])
    if not np.array_equal(a, b):
      self.fail("batch_stats", "evaluation gave different logits for the same input.")
    if not _equal(stats["batch_stats"], new.batch_stats):
      self.fail("batch_stats", "evaluation (train=False) changed the statistics.")
    return "ok"

  def dropout(self) -> str:
    state = self.state()
    variables = {"params": state.params}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    apply = jax.jit(lambda key: self.model.apply(
        variables, self.batch["image"], train=True, rngs={"dropout": key},
        mutable=["batch_stats"])[0])
    if np.array_equal(apply(jax.random.key(1)), apply(jax.random.key(2))):
      return "skipped: no dropout (training outputs do not depend on the dropout key)"
    # The loss is computed before the update, so it differs only by the masks.
    loss = lambda s: float(self.step(s, self.batch)[1]["loss"])
    if loss(state) != loss(state):
      self.fail("dropout", "the same step drew different dropout masks.")
    if loss(state) == loss(state.replace(step=state.step + 1)):
      self.fail("dropout", "consecutive steps drew the same dropout masks.")
    return "ok"

  def devices(self, spec: str | None = None, model_kwargs: dict | None = None) -> str:
    """`spec` (a model name) and `model_kwargs` rebuild the model in the subprocesses;
    without them, the model is pickled, which needs its class importable there."""
    if spec is None:
      try:
        spec = pickle.dumps(self.model)
        pickle.loads(spec)
      except Exception as e:  # pylint: disable=broad-except
        return (f"skipped: the model cannot be sent to a subprocess ({e}); pass it as "
                "'module:attr' or define its class at module level")
    one, eight = (_run_on_devices(n, spec, model_kwargs or {}, self.image_shape,
                                  self.num_classes) for n in (1, 8))
    problem = compare_devices(one, eight)
    if problem:
      self.fail("devices", problem)
    return "ok"


def compare_devices(one: dict, eight: dict) -> str | None:
  """What differs between the runs of the devices check on 1 and on 8 devices (None:
  nothing). Each is {"losses": [2 floats], "params": {key: after 2 steps},
  "initial": {key: before}}.

  The steps are SGD (lr 0.1): an update proportional to the gradient, so a parameter
  without a true gradient (a bias before a normalisation) moves by its rounding noise
  only, where Adam would scale that noise up to a learning-rate-sized step.
  """
  losses, want = np.asarray(eight["losses"]), np.asarray(one["losses"])
  if not np.allclose(losses, want, rtol=1e-5, atol=0):
    return (f"the training losses on 8 simulated devices {losses.tolist()} differ from 1 "
            f"device's {want.tolist()}: the forward pass depends on how the batch is "
            "split (a statistic over each device's share of the batch, or randomness "
            "drawn per device?)")
  for key, want in one["params"].items():
    got = eight["params"][key]
    if np.allclose(got, want, rtol=1e-4, atol=1e-6):
      continue
    diff = float(np.max(np.abs(got - want)))
    moved = float(np.max(np.abs(want - one["initial"][key])))
    cause = ("it barely moves in training (its largest step "
             f"{moved:.3g} against a difference of {diff:.3g}): its gradient is near "
             "zero and made of rounding noise, as a bias before a normalisation's is; "
             "drop that bias (use_bias=False)" if moved < 2 * diff else
             "the losses agree, so the gradient of this parameter depends on how the "
             "batch is split (a sum over each device's share, a cross-device "
             "reduction missing or doubled?)")
    return (f"parameter {key} after 2 SGD steps on 8 simulated devices differs from 1 "
            f"device by up to {diff:.3g}; {cause}.")
  return None


def _equal(a, b) -> bool:
  """Bitwise equality of two trees of arrays."""
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


_DEVICE_SCRIPT = r"""
import json, pickle, sys
import jax, numpy as np, optax
from cnn_jax import cpu, mesh as mesh_lib, models, testing, train
cpu.enable()
spec, kwargs, shape, num_classes, out = json.loads(sys.argv[1])
if spec.startswith("pickle:"):
  with open(spec[len("pickle:"):], "rb") as f:
    model = pickle.load(f)
else:
  model = models.build_model(spec, num_classes, **kwargs)
mesh = mesh_lib.make_mesh()
state = jax.jit(lambda k: train.create_train_state(model, k, shape, optax.sgd(0.1)),
                out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
batch = jax.device_put(testing.fixed_batch(shape, num_classes, 8),
                       mesh_lib.batch_sharding(mesh))
initial = {jax.tree_util.keystr(p): np.asarray(v)
           for p, v in jax.tree_util.tree_leaves_with_path(state.params)}
step = jax.jit(train.train_step)
losses = []
for _ in range(2):
  state, m = step(state, batch)
  losses.append(float(m["loss"]) / float(m["count"]))
params = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(out, **params, **{"initial" + k: v for k, v in initial.items()})
print(json.dumps({"devices": jax.device_count(), "losses": losses}))
"""


def _run_on_devices(n: int, spec, model_kwargs, image_shape, num_classes) -> dict:
  """One run of the device script on `n` simulated CPU devices."""
  with tempfile.TemporaryDirectory() as tmp:
    if isinstance(spec, bytes):
      path = os.path.join(tmp, "model.pkl")
      with open(path, "wb") as f:
        f.write(spec)
      spec = "pickle:" + path
    out = os.path.join(tmp, "params.npz")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": "cpu",
           # The model's module must import there as it does here.
           "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    args = json.dumps([spec, model_kwargs, list(image_shape), num_classes, out])
    run = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, args], env=env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode:
      raise AssertionError(f"check_model devices: the {n}-device run failed:\n"
                           f"{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["devices"] != n:
      raise AssertionError(f"check_model devices: asked for {n} simulated devices, "
                           f"got {result['devices']}.")
    with np.load(out) as saved:
      result["params"] = {k: v for k, v in saved.items() if not k.startswith("initial")}
      result["initial"] = {k[len("initial"):]: v for k, v in saved.items()
                           if k.startswith("initial")}
  return result


def check_model(model: str | nn.Module | Callable[..., nn.Module],
                image_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, *,
                model_kwargs: dict | None = None, expected_params: int | None = None,
                checks: Sequence[str] = CHECKS, batch_size: int = 4, seed: int = 0,
                grad_tolerance: float = 1e-3, jit_rtol: float = 1e-5) -> dict[str, Any]:
  """Checks that `model` works in this project's training loop.

  Args:
    model: a MODELS name or "module:attr" string (built with `models.build_model`), a
      Module class or factory (called with num_classes and `model_kwargs`), or a
      Module instance. Names and module-level classes also run the "devices" check,
      which rebuilds the model in a subprocess.
    image_shape: (height, width, channels) of the test images: small keeps it cheap.
    num_classes: output logits.
    model_kwargs: constructor arguments, as in config.model_kwargs.
    expected_params: the exact parameter count to pin (None: not checked).
    checks: a subset of CHECKS, in any order; ABSTRACT_CHECKS for big models:
      - shapes: init and apply (train and eval) give [batch, num_classes] logits;
      - params: the parameter count equals `expected_params`;
      - deterministic: the same seed gives the same bits (initialisation traced
        twice, a step run twice), another seed other parameters;
      - jit: a jitted train step equals the eager one (SGD 0.1; parameters to
        `jit_rtol` and 1e-6 absolute);
      - gradients: finite, and equal to finite differences in reverse and forward
        mode (`jax.test_util.check_grads` in float64, `grad_tolerance`), at the
        parameters after one step;
      - learns: ten Adam steps (lr 1e-3) lower the loss of one batch by 1% or more
        (measured in training mode with fixed dropout masks);
      - batch_stats: training moves every BatchNorm statistic, evaluation none
        (skipped without BatchNorm);
      - dropout: the same step draws the same masks, the next step others (skipped
        without dropout);
      - devices: two steps (SGD 0.1) on 8 simulated devices equal 1 device: the
        losses to 1e-5, the parameters to 1e-4 relative and 1e-6 absolute
        (subprocesses); a failure says which differs and the likely cause.
    batch_size: images per test batch (the devices check uses 8).
    seed: the key of the initialisation and of the test batch.
    grad_tolerance: absolute and relative tolerance of the gradient check.
    jit_rtol: relative tolerance of the jit check: 1e-5 suits a few layers; deep
      networks round differently fused and unfused by more (1e-3 for twenty layers
      with BatchNorm on four images).

  Returns:
    {"num_params": int, "num_batch_stats": int, <check>: "ok" or "skipped: why"}.

  Raises:
    AssertionError: a check failed; the message names the model and the check.
  """
  unknown = set(checks) - set(CHECKS)
  if unknown:
    raise ValueError(f"Unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}.")
  cpu.enable()  # The model is checked as the runner trains it.
  model_kwargs = dict(model_kwargs or {})
  built = _build(model, num_classes, model_kwargs)
  label = model if isinstance(model, str) else type(built).__name__
  checker = _Checker(built, label, image_shape, num_classes, batch_size, seed,
                     expected_params, grad_tolerance, jit_rtol)
  report: dict[str, Any] = {
      "num_params": _count(checker.variables["params"]),
      "num_batch_stats": _count(checker.variables.get("batch_stats", {}))}
  for name in (c for c in CHECKS if c in checks):
    if name == "devices" and isinstance(model, str) and _is_json(model_kwargs):
      report[name] = checker.devices(model, model_kwargs)
    else:
      report[name] = getattr(checker, name)()
  return report


def _is_json(value) -> bool:
  try:
    json.dumps(value)
    return True
  except TypeError:
    return False
