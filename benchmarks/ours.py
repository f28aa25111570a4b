"""Our side of a cell: the runner's compiled chunk of training steps, timed in windows.

Built as `run.build_experiment` builds it (the experiment config's optimizer state
and `run.compile_train_chunk`) on device-resident random images, without
augmentation (the Keras side has none). Each dispatch is followed by a read of its
loss, as the runner's divergence check does.
"""

import importlib
import itertools
import os
import time

from benchmarks import method
from benchmarks import workers


def bench_config(spec: dict):
  """The tutorial config with the cell's model, batch size and dtype (float32 unless
  the spec says), and the steps per dispatch of the cell's experiment (capped at a
  window)."""
  seed_cnn = importlib.import_module("experiments.seed_cnn")
  experiment = importlib.import_module(f"experiments.{spec['experiment']}")
  config = seed_cnn.get_config()
  config.model = spec["model"]
  config.batch_size = spec["batch_size"]
  config.dtype = spec.get("dtype", "float32")
  config.steps_per_dispatch = min(experiment.get_config().steps_per_dispatch,
                                  spec["window_steps"])
  if spec["window_steps"] % config.steps_per_dispatch:
    raise ValueError(f"window_steps={spec['window_steps']} is not a multiple of "
                     f"steps_per_dispatch={config.steps_per_dispatch}.")
  return config


class OurTraining:
  """Our training of a cell's model on its random images, compiled and ready: each
  `window()` runs `spec["window_steps"]` steps, a dispatch at a time."""

  def __init__(self, spec: dict):
    from cnn_jax.cpu import flags as xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.set_default_flags()
    t0 = time.perf_counter()
    import jax  # pylint: disable=g-import-not-at-top
    from cnn_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from cnn_jax import models, run  # pylint: disable=g-import-not-at-top
    from cnn_jax.data import in_memory, preprocess  # pylint: disable=g-import-not-at-top
    from cnn_jax import cpu  # pylint: disable=g-import-not-at-top

    cpu.enable()
    self.spec, config = spec, bench_config(spec)
    shape = tuple(spec["image_shape"])
    mesh = mesh_lib.make_mesh()
    self.split = in_memory.put_split(*workers.random_data(spec["num_images"], shape),
                                     mesh)
    net = models.build_model(config.model, spec["num_classes"], config.dtype,
                             **(spec.get("model_kwargs") or {}))
    create = run.state_factory(config, net, shape,
                               spec["num_images"] // spec["batch_size"])
    self.keys = run.root_keys(config.seed)
    # A stack of one run, as the runner trains it (run.jit_train_chunk).
    self.state = run.stack([jax.jit(create, out_shardings=mesh_lib.replicated(mesh))(
        self.keys["init"])])
    self.train_chunk = run.compile_train_chunk(
        config, preprocess.scale_to_unit, None, None, mesh_lib.batch_sharding(mesh))
    self.chunk = config.steps_per_dispatch
    first = next(stream := self._chunks())
    self.stream = itertools.chain([first], stream)
    t1 = time.perf_counter()
    # Compiled ahead (the calls reuse it), to time compilation on its own and read
    # XLA's cost analysis, which counts the loop body, one step, once.
    self.compiled = self.train_chunk.lower(self.state, self.split.arrays, first).compile()
    compile_sec = time.perf_counter() - t1
    counted = self.compiled
    if cpu.active():  # Its custom calls count no FLOPs: count XLA's program.
      with cpu.disabled():
        counted = run.compile_train_chunk(
            config, preprocess.scale_to_unit, None, None, mesh_lib.batch_sharding(mesh)
        ).lower(self.state, self.split.arrays, first).compile()
    cost = counted.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    summary = models.summary(net, shape)
    self.info = {
        "jax": jax.__version__, "device": jax.devices()[0].device_kind,
        "dtype": config.dtype, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "steps_per_dispatch": self.chunk, "setup_sec": t1 - t0,
        "compile_sec": compile_sec, "params": summary["params"],
        "forward_flops_per_image": summary["flops_per_image"],
        "train_flops_per_image": cost.get("flops", 0.0) / spec["batch_size"] or None}

  def _chunks(self):
    """Row indices of each dispatch, epoch after epoch, as the runner's in-memory
    pipeline hands them out (host arrays)."""
    from cnn_jax.data import batching  # pylint: disable=g-import-not-at-top
    batch, rows = self.spec["batch_size"], self.split.rows
    per_epoch = len(rows) // batch
    epoch = 0
    while True:
      order = rows[batching.epoch_order(self.keys["data"], epoch, len(rows), batch)]
      for pos in range(0, per_epoch - self.chunk + 1, self.chunk):
        yield order[None, pos:pos + self.chunk]  # [runs (one), steps, batch].
      epoch += 1

  def window(self) -> float:
    """Trains one window; its seconds. Each dispatch's loss is read once the next
    dispatch is queued, as the runner's divergence check does, and the last one's at
    the window's end."""
    t, unread = time.perf_counter(), None
    for _ in range(self.spec["window_steps"] // self.chunk):
      self.state, sums = self.train_chunk(self.state, self.split.arrays,
                                          next(self.stream))
      if unread is not None:
        float(unread["loss"][0])
      unread = sums
    float(unread["loss"][0])
    return time.perf_counter() - t


def setup(spec: dict):
  """(measure, info) of our worker for the cell `spec` (plan.Cell.spec)."""
  ours = OurTraining(spec)

  def measure(tolerance=None, max_windows=None) -> dict:
    steady = method.SteadyState(tolerance or spec["tolerance"],
                                max_windows or spec["max_windows"])
    while not steady.add(spec["window_steps"] * spec["batch_size"], ours.window()):
      pass
    return {**steady.result(), "peak_rss_mb": method.peak_rss_mb()}

  return measure, ours.info


def setup_peak(spec: dict):
  """A worker whose info is `matmul_peak` (it answers no requests)."""
  return None, matmul_peak(spec.get("seconds", 1.0))


def matmul_peak(seconds: float = 1.0) -> dict:
  """This CPU's float32 matmul FLOP/s: the best over three square sizes of XLA's dot
  and of NumPy's BLAS (the higher, so the floor is not flattering), the ceiling our
  training steps are compared against."""
  from cnn_jax.cpu import flags as xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_default_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  xla_dot = jax.jit(lambda x, y: x @ y)
  runs = {"xla": lambda a: xla_dot(a, a).block_until_ready(), "numpy": lambda a: a @ a}
  rates = {}
  for library, dot in runs.items():
    for n in (512, 1024, 2048):
      a = np.ones((n, n), np.float32)
      rates[f"{library}_{n}"] = matmul_rate(
          dot, jax.device_put(a) if library == "xla" else a, seconds)
  best = max(rates, key=rates.get)
  return {"flops_per_sec": rates[best], "best": best, "rates": rates}


def matmul_rate(dot, a, seconds: float) -> float:
  """FLOP/s of `dot(a)` (a square matrix times itself) repeated for `seconds` after
  one untimed call; `dot`'s last result is waited for (asynchronous backends)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(dot(a))
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    out = dot(a)
    calls += 1
  jax.block_until_ready(out)
  return 2 * a.shape[0]**3 * calls / (time.perf_counter() - t0)
