"""Measurements run in worker processes that stay up for a whole cell of the table.

A worker sets up once (imports, data, model, compilation), says it is ready, then
answers one measurement request at a time; between requests it waits on its input
and uses no CPU. So ours and the peer's measurements can be interleaved (ours, Keras,
ours, Keras, ...) without paying start-up or compilation again, and each framework
keeps its own process (its own peak memory, no shared thread pools).

Protocol: JSON lines. The worker prints `BENCH_READY {info}` once, then
`BENCH_RESULT {result}` per request line on stdin; EOF ends it.
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback

READY, RESULT = "BENCH_READY ", "BENCH_RESULT "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerError(RuntimeError):
  """A worker process failed; the message holds the end of its output."""


class Worker:
  """Parent side: a worker process of `kind` (a key of `cli._setups()`) for `spec`,
  with `env` added to its environment. With `wait=False` it is started and left to
  set up: call `wait_ready()` before the first request (workers set up in parallel)."""

  def __init__(self, kind: str, spec: dict, wait: bool = True, env: dict | None = None):
    self.kind = kind
    # A file, not a pipe: a chatty worker never blocks on a full stderr pipe.
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--worker", kind, "--spec",
         json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr, text=True, env={**subprocess_env(), **(env or {})})
    self.info = None
    if wait:
      self.wait_ready()

  def wait_ready(self) -> dict:
    """Waits until the worker has set up; its info."""
    if self.info is None:
      self.info = self._read(READY)
    return self.info

  def request(self, **command) -> dict:
    """Sends one request and returns the worker's result."""
    self._proc.stdin.write(json.dumps(command) + "\n")
    self._proc.stdin.flush()
    return self._read(RESULT)

  def _read(self, prefix: str) -> dict:
    for line in self._proc.stdout:
      if line.startswith(prefix):
        return json.loads(line[len(prefix):])
    self._proc.wait()
    self._stderr.seek(0)
    raise WorkerError(f"The {self.kind} worker ended (exit {self._proc.returncode}) "
                      f"without a result:\n{self._stderr.read()[-4000:]}")

  def close(self) -> None:
    """Ends the worker and waits for it (so its CPU time is counted as ours)."""
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait()
    self._stderr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if exc[0] is not None and self._proc.poll() is None:
      self._proc.kill()
    self.close()


def serve(setup, spec: dict) -> int:
  """Worker side: `measure, info = setup(spec)`; then answers requests on stdin with
  `measure(**request)` until EOF. Results go to stdout, everything else to stderr."""
  stdout = sys.stdout
  sys.stdout = sys.stderr  # Libraries' prints must not interleave with the protocol.
  try:
    measure, info = setup(spec)
    stdout.write(READY + json.dumps(info) + "\n")
    stdout.flush()
    for line in sys.stdin:
      if line.strip():
        stdout.write(RESULT + json.dumps(measure(**json.loads(line))) + "\n")
        stdout.flush()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1
  finally:
    sys.stdout = stdout
  return 0


def random_data(num_images: int, image_shape, num_classes: int = 10, seed: int = 0):
  """The same uint8 images [N, H, W, C] and int32 labels [N] for every worker."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, *image_shape), dtype=np.uint8)
  return images, rng.integers(0, num_classes, num_images).astype(np.int32)


def subprocess_env() -> dict:
  """This process's environment with the repository root on PYTHONPATH (experiment
  configs import `experiments.*`) and the default XLA flags (as `./run.sh` sets them
  for training)."""
  from cnn_jax.cpu import flags as xla_flags  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  xla_flags.set_default_flags(env)
  return env
