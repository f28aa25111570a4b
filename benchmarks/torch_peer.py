"""The GPU peer's side of a cell: the same network in PyTorch, timed in windows.

A training step as PyTorch users write it: a batch gathered on the device by a
random permutation (as ours gathers from device-resident images), scaled to [0, 1],
cross-entropy, backward, Adam 1e-3. Settings (`spec`):
- `compile`: `torch.compile` of the network (forward and backward, through
  AOTAutograd and Inductor), else eager;
- `dtype`: `float32`, or `bfloat16` under `torch.autocast` (parameters float32);
- `tuned`: PyTorch at its best for convolutions: `cudnn.benchmark`, TF32 matmuls (its
  convolutions allow TF32 by default, as XLA's do), channels-last memory and the fused
  Adam; untuned is PyTorch as shipped (defaults: NCHW, foreach Adam, no benchmark).
A window runs its steps and then reads the last loss (one sync per window, as ours
reads each dispatch's loss).
"""

import time

from benchmarks import method
from benchmarks import torch_nets
from benchmarks import workers

LEARNING_RATE = 1e-3
WARMUP_STEPS = 3  # Compilation and cudnn's algorithm search happen here, untimed.


def setup(spec: dict):
  """(measure, info) of the torch worker for the cell `spec` (with the settings above)."""
  t0 = time.perf_counter()
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  tuned, bf16 = spec["tuned"], spec["dtype"] == "bfloat16"
  torch.manual_seed(0)
  if tuned:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
  layout = torch.channels_last if tuned else torch.contiguous_format
  images, labels = workers.random_data(spec["num_images"], spec["image_shape"],
                                       spec["num_classes"])
  images = torch.from_numpy(images).to(device)  # uint8 NHWC, as ours keeps them
  labels = torch.from_numpy(labels).long().to(device)
  net = torch_nets.build(spec["model"], spec["image_shape"], spec["num_classes"])
  net = net.to(device, memory_format=layout).train()
  opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE,
                         **({"fused": True} if tuned and device.type == "cuda" else {}))
  forward = torch.compile(net) if spec["compile"] else net
  batch, n = spec["batch_size"], len(labels)
  order = {"perm": torch.randperm(n, device=device), "pos": 0}

  def step():
    if order["pos"] + batch > n:
      order["perm"], order["pos"] = torch.randperm(n, device=device), 0
    rows = order["perm"][order["pos"]:order["pos"] + batch]
    order["pos"] += batch
    # NHWC bytes seen as NCHW: channels-last strides; `contiguous` makes them NCHW.
    x = (images[rows].permute(0, 3, 1, 2).float() / 255).contiguous(memory_format=layout)
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(forward(x), labels[rows])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  t1 = time.perf_counter()
  for _ in range(WARMUP_STEPS):
    loss = step()
  float(loss)
  warmup_sec = time.perf_counter() - t1

  def window() -> float:
    t = time.perf_counter()
    for _ in range(spec["window_steps"]):
      loss = step()
    float(loss)
    return time.perf_counter() - t

  def measure(tolerance=None, max_windows=None) -> dict:
    steady = method.SteadyState(tolerance or spec["tolerance"],
                                max_windows or spec["max_windows"])
    while not steady.add(spec["window_steps"] * batch, window()):
      pass
    return {**steady.result(), "peak_gpu_mb": _peak_gpu_mb(torch, device)}

  info = {"torch": torch.__version__, "device": _device_name(torch, device),
          "params": torch_nets.trainable_parameters(net), "setup_sec": t1 - t0,
          "warmup_sec": warmup_sec, "compile": spec["compile"], "dtype": spec["dtype"],
          "tuned": tuned}
  if spec.get("check"):  # Ours against this network, before anything is timed.
    info["check"] = torch_nets.same_loss(spec["model"], spec["image_shape"],
                                         spec["num_classes"])
  return measure, info


def _peak_gpu_mb(torch, device) -> float | None:
  return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def _device_name(torch, device) -> str:
  return torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
