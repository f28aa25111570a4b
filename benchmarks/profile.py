"""Where our training step spends its time on CPU: `./run.sh bench --profile CELL`.

Traces a few windows of a cell's training (the bench's own `ours.OurTraining`) with
`jax.profiler`, reads the time of every XLA:CPU thunk from the trace, and groups the
thunks by what the model code they came from (XLA's op_name metadata: forward or
backward, layer, primitive).
"""

import collections
import glob
import re
import tempfile
import time

from benchmarks import ours as ours_lib

PREFIX = "jit(train_steps)/while/body/closed_call/"
# Primitives that stand for the ReLU and 2x2 max-pool (forward and gradient).
RELU_POOL = {"max", "reduce_max", "select_n", "relu", "argmax"}


def thunk_seconds(trace_dir: str) -> collections.Counter:
  """Seconds per XLA:CPU thunk (by instruction name), summed over threads."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  seconds = collections.Counter()
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if "Eigen" not in line.name:  # XLA:CPU's worker threads run the thunks.
        continue
      for event in line.events:
        name = names.get(event.metadata_id, "")
        if name and not name.startswith(("ThunkExecutor", "Slinky")):
          seconds[name] += event.duration_ps * 1e-12
  return seconds


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (shape, op_name metadata) in compiled HLO text."""
  found = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name="([^"]+)"', line)
    if m:
      found[m.group(1)] = (m.group(2), m.group(3).replace(PREFIX, ""))
  return found


def category(op_name: str) -> str:
  """'backward: Conv' from 'transpose(jvp(VGGBN))/Conv_1/cond/branch_0_fun/dot_general'."""
  if "transpose(" in op_name:
    direction = "backward"
  elif "jvp(" in op_name:
    direction = "forward"
  else:
    return "optimizer, metrics, loop"
  parts = op_name.split("/")
  layers = [re.sub(r"_\d+$", "", p) for p in parts[1:]
            if re.match(r"^[A-Za-z]+_\d+$", p) and not p.startswith("branch")]
  primitive = parts[-1]
  if primitive in RELU_POOL or "relu" in op_name:
    what = "ReLU, max-pool"
  elif layers:
    what = layers[-1] + (" (shifted-window copies)"
                         if primitive in ("slice", "concatenate") else "")
  else:
    what = primitive
  return f"{direction}: {what}"


def profile(cell, windows: int = 3, top: int = 10) -> dict:
  """Op time of our training of `cell` (a plan.Cell), by category and top thunks."""
  import jax  # pylint: disable=g-import-not-at-top
  ours = ours_lib.OurTraining(cell.spec(0.0, 0))
  ours.window()
  ours.window()
  with tempfile.TemporaryDirectory(prefix="cnn_jax_profile_") as trace_dir:
    t = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(windows):
        ours.window()
    wall = time.perf_counter() - t
    seconds = thunk_seconds(trace_dir)
  meta = op_names(ours.compiled.as_text())
  steps = windows * cell.window_steps
  total = sum(seconds.values())
  by_category = collections.Counter()
  for name, sec in seconds.items():
    by_category[category(meta.get(name, ("", ""))[1])] += sec
  return {
      "cell": cell.name, "steps": steps,
      "images_per_sec": steps * cell.batch_size / wall,
      "wall_ms_per_step": 1e3 * wall / steps, "op_ms_per_step": 1e3 * total / steps,
      "categories": [{"name": k, "ms_per_step": 1e3 * v / steps, "share": v / total}
                     for k, v in by_category.most_common()],
      "top_ops": [{"name": n, "shape": meta.get(n, ("", ""))[0],
                   "op_name": meta.get(n, ("", ""))[1], "ms_per_step": 1e3 * v / steps,
                   "share": v / total} for n, v in seconds.most_common(top)]}


def markdown(result: dict) -> str:
  lines = [f"Profile of our training, {result['cell']}: {result['images_per_sec']:,.0f} "
           f"img/s while traced; XLA:CPU thunks {result['op_ms_per_step']:.2f} ms per "
           f"step of {result['wall_ms_per_step']:.2f} ms wall (both threads summed).", "",
           "| where | ms/step | share |", "|---|---|---|"]
  small = [c for c in result["categories"] if c["share"] < 0.005]
  lines += [f"| {c['name']} | {c['ms_per_step']:.2f} | {c['share']:.0%} |"
            for c in result["categories"] if c["share"] >= 0.005]
  if small:
    lines.append(f"| {len(small)} others, each < 0.5% | "
                 f"{sum(c['ms_per_step'] for c in small):.2f} "
                 f"| {sum(c['share'] for c in small):.0%} |")
  lines += ["", "| thunk | shape | ms/step | share | from |", "|---|---|---|---|---|"]
  lines += [f"| {o['name']} | {o['shape'].split('{')[0]} | {o['ms_per_step']:.2f} "
            f"| {o['share']:.0%} | {o['op_name'][-70:]} |" for o in result["top_ops"]]
  return "\n".join(lines)
