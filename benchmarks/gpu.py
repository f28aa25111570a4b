"""`./run.sh bench --gpu`: our training against PyTorch's on the same GPU.

Cells (GPU_CELLS): VGG-BN and ResNet-20 at batch 512, the issue's GPU targets. Rows
(ROWS): ours in float32 and in bfloat16 (config.dtype), and the same network in
PyTorch (torch_peer.py): eager as shipped, then tuned (cudnn.benchmark, TF32 matmuls,
channels-last, fused Adam) eager and under `torch.compile`, each in float32 and in
bf16 autocast. Before timing, the torch network is checked against ours (same
parameter count; the same loss on the same batch from our initial weights, in float32
on the CPU); a pair that differs is not timed.

Method as on the CPU (method.py): steady state detected from windows of a known
number of steps; every row's workers set up at once (compilation in parallel, nothing
timed), then `reps` repetitions interleaved row by row; median and min-max. The card's
matmul peak is measured (JAX, float32 at its default precision and bfloat16) and each
row's achieved FLOP/s is 3x our forward FLOPs per image (models.summary) times its
images/s: the share of that peak it reaches is reported.
"""

import contextlib
import datetime
import time

from benchmarks import method
from benchmarks import plan
from benchmarks import workers

GPU_CELLS = (
    plan.Cell("vgg_bn", 512, (28, 28, 1), "vgg_bn_fashion_mnist", 60, 4, ()),
    plan.Cell("resnet20", 512, (32, 32, 3), "resnet20_cifar10", 50, 4, ()),
)
# (row name, worker kind, the worker's settings)
ROWS = (
    ("ours float32", "ours", {"dtype": "float32"}),
    ("ours bfloat16", "ours", {"dtype": "bfloat16"}),
    ("torch eager float32, as shipped", "torch",
     {"compile": False, "dtype": "float32", "tuned": False, "check": True}),
    ("torch eager float32, tuned", "torch",
     {"compile": False, "dtype": "float32", "tuned": True}),
    ("torch eager bf16 autocast, tuned", "torch",
     {"compile": False, "dtype": "bfloat16", "tuned": True}),
    ("torch.compile float32, tuned", "torch",
     {"compile": True, "dtype": "float32", "tuned": True}),
    ("torch.compile bf16 autocast, tuned", "torch",
     {"compile": True, "dtype": "bfloat16", "tuned": True}),
)
# Each of our workers takes this share of the GPU's memory (several are up at once).
OURS_MEMORY_FRACTION = "0.08"
LOSS_RTOL = 1e-4


def worker_env(kind: str) -> dict:
  """Environment of a GPU worker: ours share the card; the torch workers' JAX (for the
  equivalence check only) stays on the CPU."""
  if kind == "ours":
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": OURS_MEMORY_FRACTION}
  return {"JAX_PLATFORMS": "cpu"}


def run_cell(cell: plan.Cell, workers_up: dict, reps: int, log) -> dict:
  """Measures every row of `cell` `reps` times, interleaved; `workers_up` maps row
  names to ready workers."""
  check = next(w.info["check"] for w in workers_up.values() if "check" in w.info)
  same = (check["params_ours"] == check["params_torch"]
          and abs(check["loss_ours"] - check["loss_torch"])
          <= LOSS_RTOL * abs(check["loss_ours"]))
  if not same:
    raise RuntimeError(f"{cell.name}: the torch network is not ours: {check}")
  runs = {name: [] for name in workers_up}
  for rep in range(reps):
    for name, worker in workers_up.items():
      runs[name].append(worker.request())
    log(f"  {cell.name} rep {rep + 1}/{reps}: " + ", ".join(
        f"{name} {r[-1]['images_per_sec']:,.0f}" for name, r in runs.items()))
  rows = [{"name": name, **workers_up[name].info, **method.summarize_reps(r)}
          for name, r in runs.items()]
  return {"name": cell.name, "model": cell.model, "batch_size": cell.batch_size,
          "image_shape": list(cell.image_shape), "window_steps": cell.window_steps,
          "num_images": cell.num_images, "check": check, "rows": rows}


def add_ratios(cell: dict, peak: dict) -> None:
  """Ours against torch.compile per dtype and best against best, and each row's share
  of the card's matmul peak of its dtype."""
  rows = {r["name"]: r for r in cell["rows"]}
  # Training FLOPs as 3x the forward's (models.summary, counted on the CPU): XLA's cost
  # analysis of the GPU step leaves out cuDNN's convolutions.
  forward = rows["ours float32"]["forward_flops_per_image"]
  flops = cell["train_flops_per_image"] = 3 * forward if forward else None
  for row in cell["rows"]:
    rate = row["images_per_sec"]["median"]
    row["achieved_flops"] = rate * flops if flops else None
    dtype_peak = peak["flops_per_sec"].get(row["dtype"])
    row["share_of_peak"] = rate * flops / dtype_peak if flops and dtype_peak else None
  best = lambda name: method.best_rate(rows[name]["reps"])
  median = lambda name: rows[name]["images_per_sec"]["median"]
  ours_best = max(("ours float32", "ours bfloat16"), key=best)
  compiled = [n for n in rows if n.startswith("torch.compile")]
  torch_best = max((n for n in rows if n.startswith("torch")), key=best)
  pairs = {"float32": ("ours float32", "torch.compile float32, tuned"),
           "bfloat16": ("ours bfloat16", "torch.compile bf16 autocast, tuned"),
           "best": (ours_best, max(compiled, key=best)),
           "best_of_torch": (ours_best, torch_best)}
  # As on the CPU: each side's best steady measurement; the medians' ratio beside it.
  cell["ratios"] = {key: best(a) / best(b) for key, (a, b) in pairs.items()}
  cell["ratios_median"] = {key: median(a) / median(b) for key, (a, b) in pairs.items()}
  cell["ratios"].update(ours_best=ours_best, torch_best=torch_best)


def targets(results: dict) -> list[dict]:
  out = []
  for cell in results["cells"]:
    for key, what in [("float32", "float32"), ("bfloat16", "bfloat16"),
                      ("best", "fastest dtype of each")]:
      value = cell["ratios"][key]
      out.append({"name": f"{cell['name']} ({what}): ours / torch.compile",
                  "target": 1.0, "value": value, "pass": value >= 1.0})
  return out


def matmul_peak(seconds: float = 1.0) -> dict:
  """The GPU's matmul FLOP/s through JAX, float32 (JAX's default precision, which
  may use TF32) and bfloat16: the best of two square sizes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import ours  # pylint: disable=g-import-not-at-top
  dot = jax.jit(lambda x: x @ x)
  rates, best = {}, {}
  for dtype in ("float32", "bfloat16"):
    for n in (4096, 8192):
      rates[f"{dtype}_{n}"] = ours.matmul_rate(dot, jnp.ones((n, n), dtype), seconds)
    best[dtype] = max(v for k, v in rates.items() if k.startswith(dtype))
  return {"flops_per_sec": best, "rates": rates, "device": jax.devices()[0].device_kind}


def setup_peak(spec: dict):
  """A worker whose info is the GPU's `matmul_peak` (it answers no requests)."""
  return None, matmul_peak(spec.get("seconds", 1.0))


def benchmark(cells, reps: int, tolerance: float, max_windows: int, quick: bool,
              log) -> dict:
  """Every GPU measurement (see the module docstring)."""
  t0 = time.perf_counter()
  results = {"kind": "gpu", "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": method.machine(),
             "settings": {"reps": reps, "tolerance": tolerance,
                          "max_windows": max_windows,
                          "max_seconds": method.MAX_SECONDS, "quick": quick}}
  with workers.Worker("gpu_peak", {"seconds": 0.2 if quick else 1.0},
                      env=worker_env("ours")) as peak:
    results["matmul_peak"] = peak.info
  with contextlib.ExitStack() as stack:  # A failure kills every worker still up.
    started = {}
    for cell in cells:  # Every worker sets up (and compiles) at once.
      spec = cell.spec(tolerance, max_windows)
      for name, kind, settings in ROWS:
        started[cell.name, name] = stack.enter_context(workers.Worker(
            kind, {**spec, **settings}, wait=False, env=worker_env(kind)))
    for worker in started.values():
      worker.wait_ready()
    log(f"GPU workers ready after {time.perf_counter() - t0:.0f} s")
    results["cells"] = []
    for cell in cells:
      up = {name: started[cell.name, name] for name, _, _ in ROWS}
      measured = run_cell(cell, up, reps, log)
      add_ratios(measured, results["matmul_peak"])
      results["cells"].append(measured)
      for worker in up.values():  # Its GPU memory back before the next cell.
        worker.close()
  results["targets"] = targets(results)
  results["warnings"] = [f"{c['name']} {r['name']}: a repetition reached no steady state"
                         for c in results["cells"] for r in c["rows"] if not r["steady"]]
  results["total_sec"] = time.perf_counter() - t0
  return results
