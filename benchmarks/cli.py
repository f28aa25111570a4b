"""`./run.sh bench`: runs the cells of plan.CELLS and the end-to-end jobs, prints the
table and writes the JSON (see the package docstring for the method)."""

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

from benchmarks import e2e
from benchmarks import method
from benchmarks import plan
from benchmarks import render
from benchmarks import workers

E2E_EPOCHS = 5
# Keras settings within this share of the fastest tuning measurement (one each) are
# measured again in the interleaved repetitions (the others cannot be the fastest).
RETRY_MARGIN = 0.05
# The issue's estimate of the CPU compute floor of the tutorial CNN, images/s.
ISSUE_FLOOR = 60_000


def progress(message: str) -> None:
  print(message, flush=True)


def _setups():
  # pylint: disable=g-import-not-at-top
  from benchmarks import gpu, ours, peers, torch_peer
  return {"ours": ours.setup, "keras": peers.setup, "peak": ours.setup_peak,
          "torch": torch_peer.setup, "gpu_peak": gpu.setup_peak}


def run_cell(cell: plan.Cell, reps: int, tolerance: float, max_windows: int,
             log=progress) -> dict:
  """Tunes Keras's settings for `cell` (one measurement each), then measures ours, the
  Keras defaults and every setting near the fastest `reps` times, interleaved."""
  snap = method.LoadSnapshot.take()
  spec = cell.spec(tolerance, max_windows)
  with contextlib.ExitStack() as stack:
    ours = stack.enter_context(workers.Worker("ours", spec))
    peer = stack.enter_context(workers.Worker("keras", spec))
    # Our mixed precision (config.dtype=bfloat16), beside our float32: no target.
    bf16 = (stack.enter_context(workers.Worker("ours", {**spec, "dtype": "bfloat16"}))
            if cell.bf16 else None)
    bf16_reps = []
    tuning = []

    def tune(config):
      tuning.append({"config": config, "name": plan.config_name(config),
                     **peer.request(**config)})
      log(f"  {cell.name} Keras {tuning[-1]['name']}: "
          f"{tuning[-1]['images_per_sec']:,.0f} img/s (tuning)")
    for config in plan.keras_configs(cell):
      tune(config)
    best = max(tuning, key=lambda t: t["images_per_sec"])
    tune(plan.xla_config(best["config"]["steps_per_execution"]))
    fastest = max(t["images_per_sec"] for t in tuning)
    chosen = [t for i, t in enumerate(tuning)
              if i == 0 or t["images_per_sec"] >= (1 - RETRY_MARGIN) * fastest]
    ours_reps, keras_reps = [], [[] for _ in chosen]
    for rep in range(reps):
      ours_reps.append(ours.request())
      for runs, t in zip(keras_reps, chosen):
        runs.append(peer.request(**t["config"]))
      if bf16:
        bf16_reps.append(bf16.request())
      log(f"  {cell.name} rep {rep + 1}/{reps}: ours "
          f"{ours_reps[-1]['images_per_sec']:,.0f} img/s, Keras "
          + ", ".join(f"{t['name']} {r[-1]['images_per_sec']:,.0f}"
                      for t, r in zip(chosen, keras_reps))
          + (f", ours bfloat16 {bf16_reps[-1]['images_per_sec']:,.0f}" if bf16 else ""))
    ours_info, keras_info = ours.info, peer.info
  rows = [{"name": t["name"], "config": t["config"], **method.summarize_reps(r),
           "best": method.best_rate(r + [t])} for t, r in zip(chosen, keras_reps)]
  best = fastest_row(rows)
  ours_row = method.summarize_reps(ours_reps)
  ours_row["best"] = method.best_rate(ours_reps)
  paired = [o["images_per_sec"] / k["images_per_sec"]
            for o, k in zip(ours_reps, best["reps"])]
  keras_best = max(r["best"] for r in rows)
  return {"name": cell.name, "model": cell.model, "batch_size": cell.batch_size,
          "image_shape": list(cell.image_shape), "num_images": cell.num_images,
          "window_steps": cell.window_steps, "target": cell.target,
          "ours": {**ours_info, **ours_row},
          "keras": {**keras_info, "tuning": tuning, "rows": rows,
                    "fastest": best["name"], "fastest_config": best["config"]},
          "keras_best": keras_best,
          "ratio": ours_row["best"] / keras_best,
          "ratio_median": ours_row["images_per_sec"]["median"]
                          / best["images_per_sec"]["median"],
          "ratio_paired": method.spread(paired),
          "ours_bfloat16": method.summarize_reps(bf16_reps) if bf16_reps else None,
          "load": method.load_between(snap, method.LoadSnapshot.take())}


def fastest_row(rows: list[dict]) -> dict:
  """The Keras setting that counts as its fastest, named in the table and run end to
  end as "Keras best": the one with the best steady measurement, as the ratio counts
  it. By median, a disturbed repetition could hand the title to a slower setting."""
  return max(rows, key=lambda r: r["best"])


def targets(results: dict) -> list[dict]:
  """The issue's targets, each with the value measured and whether it holds."""
  out = []
  peak = results.get("matmul_peak", {}).get("flops_per_sec")
  for cell in results["cells"]:
    if cell["target"]:
      out.append({"name": f"{cell['name']}: ours / fastest Keras", "target": cell["target"],
                  "value": cell["ratio"], "spread": cell["ratio_paired"],
                  "pass": cell["ratio"] >= cell["target"],
                  "floor": cell_floor(cell, peak)})
  job = results.get("end_to_end")
  if job:
    out.append({"name": f"end to end ({job['epochs']} epochs, {job['dataset']}): "
                "fastest Keras / ours, seconds", "target": 2.0, "value": job["ratio"],
                "spread": job["ratio_paired"], "pass": job["ratio"] >= 2.0})
  floor = results.get("floor")
  if floor:
    out.append({"name": f"{floor['cell']}: share of the CPU compute floor (matmul "
                "peak / training FLOPs per image)", "target": None,
                "value": floor["share_of_measured_floor"], "pass": None})
    out.append({"name": f"{floor['cell']}: share of the issue's floor "
                f"({ISSUE_FLOOR:,} img/s)", "target": None,
                "value": floor["share_of_issue_floor"], "pass": None})
  out.append({"name": "GPU targets (VGG-BN, ResNet-20 at batch 512 against "
              "torch.compile)", "target": None, "value": None, "pass": None,
              "note": "measured by `./run.sh bench --gpu` on a GPU machine (its own "
              "JSON; the published run: docs/bench_gpu_latest.json)"})
  return out


def cell_floor(cell: dict, peak: float | None) -> dict | None:
  """What a cell's target asks of the CPU: the images/s it needs, ours and fastest
  Keras's, each as a share of the cell's compute floor (the matmul peak over our
  training FLOPs per image; both sides train the same network)."""
  flops = cell["ours"].get("train_flops_per_image")
  if not peak or not flops:
    return None
  floor = peak / flops
  return {"images_per_sec": floor, "needed": cell["target"] * cell["keras_best"] / floor,
          "ours": cell["ours"]["best"] / floor, "keras": cell["keras_best"] / floor}


def compute_floor(results: dict) -> dict | None:
  """Our tutorial CNN against this CPU's compute floor: images/s if every training
  FLOP ran at the measured matmul peak. Training FLOPs per image two ways: XLA's cost
  analysis of our compiled step, and 3x the forward FLOPs."""
  peak = results.get("matmul_peak", {}).get("flops_per_sec")
  cells = [c for c in results["cells"] if c["model"] == "seed_cnn"]
  if not peak or not cells:
    return None
  cell = max(cells, key=lambda c: c["ours"]["images_per_sec"]["median"])
  ours = cell["ours"]
  rate = ours["images_per_sec"]["median"]
  flops = ours["train_flops_per_image"] or 3 * ours["forward_flops_per_image"]
  return {"cell": cell["name"], "images_per_sec": rate, "matmul_peak_flops": peak,
          "train_flops_per_image": ours["train_flops_per_image"],
          "three_x_forward_flops": 3 * ours["forward_flops_per_image"],
          "floor_images_per_sec": peak / flops,
          "floor_images_per_sec_3x_forward": peak / (3 * ours["forward_flops_per_image"]),
          "share_of_measured_floor": rate * flops / peak,
          "achieved_flops": rate * flops,
          "share_of_issue_floor": rate / ISSUE_FLOOR}


def warnings_for(results: dict) -> list[str]:
  out = []
  for where, load in [("before the run", results["idle_before"]),
                      ("after the run", results["idle_after"]),
                      *[(c["name"], c["load"]) for c in results["cells"]],
                      *([("end to end", results["end_to_end"]["load"])]
                        if results.get("end_to_end") else [])]:
    if load.get("busy"):
      out.append(f"machine busy {where}: other processes used "
                 f"{load['others_share']:.0%} of the CPU")
  for cell in results["cells"]:
    for name, row in [("ours", cell["ours"]), *[(f"Keras {r['name']}", r)
                                                for r in cell["keras"]["rows"]]]:
      if not row["steady"]:
        out.append(f"{cell['name']} {name}: a repetition reached no steady state "
                   f"within {results['settings']['max_windows']} windows or "
                   f"{results['settings']['max_seconds']:.0f} s")
  return out


def benchmark(cells, reps: int, e2e_reps: int, tolerance: float, max_windows: int,
              data_dir: str | None, quick: bool, log=progress) -> dict:
  """Every measurement; see the package docstring."""
  t0 = time.perf_counter()
  start = method.LoadSnapshot.take()
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": method.machine(), "idle_before": method.idle_check(),
             "settings": {"reps": reps, "e2e_reps": e2e_reps, "tolerance": tolerance,
                          "max_windows": max_windows,
                          "max_seconds": method.MAX_SECONDS, "quick": quick,
                          "retry_margin": RETRY_MARGIN}}
  with workers.Worker("peak", {"seconds": 0.2 if quick else 1.0}) as peak:
    results["matmul_peak"] = peak.info
  results["cells"] = []
  for cell in cells:
    log(f"{cell.name}: {cell.window_steps} steps per window, "
        f"{cell.num_images:,} images")
    results["cells"].append(run_cell(cell, reps, tolerance, max_windows, log))
  if e2e_reps:
    log(f"end to end: {e2e_reps} x (ours, Keras defaults, Keras best)")
    seed32 = next((c for c in results["cells"] if c["name"] == "seed_cnn/32"), None)
    best = seed32["keras"]["fastest_config"] if seed32 else None
    results["end_to_end"] = e2e.run(data_dir, 1 if quick else E2E_EPOCHS, e2e_reps,
                                    best, quick, log)
  results["load"] = method.load_between(start, method.LoadSnapshot.take())
  results["idle_after"] = method.idle_check()
  results["floor"] = compute_floor(results)
  results["targets"] = targets(results)
  results["warnings"] = warnings_for(results)
  results["total_sec"] = time.perf_counter() - t0
  return results


def select_cells(names: str | None, quick: bool,
                 cells=plan.CELLS + plan.UNSEEN_CELLS) -> list[plan.Cell]:
  cells = [plan.quick(c) if quick else c for c in cells]
  if not names:
    return cells
  wanted = names.split(",")
  chosen = [c for c in cells if c.name in wanted or c.model in wanted]
  if not chosen:
    raise SystemExit(f"--cells {names!r} matches none of "
                     f"{', '.join(c.name for c in cells)} (or their model names).")
  return chosen


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="./run.sh bench", description=__doc__)
  parser.add_argument("--out", default=None,
                      help="JSON file for the results (default bench_results/bench.json, "
                      "with --gpu bench_results/bench_gpu.json; the published runs: "
                      "docs/bench_latest.json, docs/bench_gpu_latest.json).")
  parser.add_argument("--quick", action="store_true",
                      help="Smoke test: windows of 2 steps, 1 repetition, 1-epoch "
                      "end-to-end jobs on mnist_5k.")
  parser.add_argument("--cells", default=None,
                      help="Comma-separated cells or models (e.g. seed_cnn/32,vgg_bn); "
                      "default all.")
  parser.add_argument("--reps", type=int, default=None,
                      help="Interleaved repetitions per row (default 3; --quick 1).")
  parser.add_argument("--e2e-reps", type=int, default=None,
                      help="End-to-end repetitions (default 3; --quick 1; 0 skips).")
  parser.add_argument("--tolerance", type=float, default=method.TOLERANCE,
                      help="Consecutive windows agreeing within this share are steady.")
  parser.add_argument("--max-windows", type=int, default=None,
                      help=f"Windows before a repetition gives up (default "
                      f"{method.MAX_WINDOWS}; --quick 2).")
  parser.add_argument("--data-dir", default=None,
                      help="TFDS data dir; end to end uses fashion_mnist if it is "
                      "prepared there, else synthetic_mnist.")
  parser.add_argument("--markdown", metavar="JSON", default=None,
                      help="Print the tables of an earlier run's JSON and exit.")
  parser.add_argument("--profile", metavar="CELL", default=None,
                      help="Print where our training of CELL (e.g. seed_cnn/128, or "
                      "speedrun: the --speedrun recipe's network) spends its time "
                      "(jax.profiler trace of a few windows) and exit.")
  parser.add_argument("--gpu", action="store_true",
                      help="Ours against PyTorch (eager and torch.compile, float32 and "
                      "bf16) on this machine's GPU instead of Keras on the CPU "
                      "(bench/gpu.py; needs torch); --out default "
                      "bench_results/bench_gpu.json.")
  parser.add_argument("--speedrun", action="store_true",
                      help="Time to accuracy: the speedrun recipe, ours against its Keras "
                      "twin, each seed a process timed from its start (speedrun.py); "
                      "--out default bench_results/bench_speedrun.json.")
  parser.add_argument("--seeds", type=int, default=5, help="--speedrun: seeds per side.")
  parser.add_argument("--epochs", type=int, default=None,
                      help="--speedrun: training length (default the recipe's).")
  parser.add_argument("--config", default=None,
                      help="--speedrun: the recipe (default "
                      "experiments/speedrun_fashion_mnist.py).")
  parser.add_argument("--worker", choices=["ours", "keras", "peak", "torch", "gpu_peak"],
                      help=argparse.SUPPRESS)
  parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _write(results: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {path} ({results['total_sec'] / 60:.1f} min)")


def _gpu_main(args) -> int:
  from benchmarks import gpu  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit("--gpu times PyTorch beside ours: install torch (with CUDA) "
                     f"first ({e}).") from e
  # Checked without JAX: a JAX backend in this process would take the GPU's memory.
  if not torch.cuda.is_available() and not args.quick:
    raise SystemExit("--gpu: PyTorch sees no CUDA GPU here (--quick runs the plumbing "
                     "on the CPU).")
  results = gpu.benchmark(select_cells(args.cells, args.quick, gpu.GPU_CELLS),
                          args.reps or (1 if args.quick else 3), args.tolerance,
                          args.max_windows or (2 if args.quick else method.MAX_WINDOWS),
                          args.quick, progress)
  print(render.markdown(results))
  _write(results, args.out or "bench_results/bench_gpu.json")
  return 0


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.worker:
    return workers.serve(_setups()[args.worker], json.loads(args.spec))
  if args.markdown:
    with open(args.markdown) as f:
      results = json.load(f)
    if "settings" not in results:
      raise SystemExit(f"{args.markdown} was written by the bench before its steady-state "
                       "method (issue 14); run ./run.sh bench again to get tables.")
    print(render.markdown(results))
    return 0
  quick = args.quick
  if args.gpu:
    return _gpu_main(args)
  if args.speedrun:
    from benchmarks import speedrun  # pylint: disable=g-import-not-at-top
    results = speedrun.run(
        args.config, args.seeds, args.epochs, args.data_dir, args.tolerance,
        args.max_windows or method.MAX_WINDOWS, progress)
    print(speedrun.markdown(results))
    _write(results, args.out or "bench_results/bench_speedrun.json")
    return 0
  if args.profile:
    from benchmarks import profile  # pylint: disable=g-import-not-at-top
    if args.profile == "speedrun":
      from benchmarks import speedrun  # pylint: disable=g-import-not-at-top
      cell = speedrun.cell(speedrun.keras_recipe(speedrun.load_recipe(args.config)))
    else:
      (cell,) = select_cells(args.profile, quick)[:1]
    print(profile.markdown(profile.profile(cell)))
    return 0
  results = benchmark(
      select_cells(args.cells, quick), args.reps or (1 if quick else 3),
      (1 if quick else 3) if args.e2e_reps is None else args.e2e_reps, args.tolerance,
      args.max_windows or (2 if quick else method.MAX_WINDOWS), args.data_dir, quick)
  print(render.markdown(results))
  _write(results, args.out or "bench_results/bench.json")
  return 0
