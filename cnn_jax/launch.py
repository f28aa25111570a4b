"""Multi-process runs: joining a jax.distributed cluster, and launching one locally."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from cnn_jax.errors import ConfigError

# Environment variables by which cluster launchers announce a multi-process job that
# jax.distributed.initialize() detects by itself.
_CLUSTER_ENV = {"SLURM_NTASKS": "Slurm", "OMPI_COMM_WORLD_SIZE": "Open MPI",
                "PMI_SIZE": "MPICH", "TPU_WORKER_HOSTNAMES": "Cloud TPU"}


def detected_cluster() -> str | None:
  """The launcher whose environment says this is one of several processes, if any."""
  for var, name in _CLUSTER_ENV.items():
    value = os.environ.get(var, "")
    if (value.isdigit() and int(value) > 1) or (not value.isdigit() and "," in value):
      return name
  return None


def initialize(coordinator: str | None, num_processes: int | None,
               process_id: int | None, timeout_s: int = 120) -> None:
  """Joins the cluster before anything touches a device; a no-op for one process.

  Explicit flags win; otherwise JAX reads the cluster launcher's environment (Slurm,
  Open MPI, MPICH, Cloud TPU). Timeouts are bounded so a process whose peers died
  stops with an error instead of hanging.
  """
  import jax  # pylint: disable=g-import-not-at-top
  explicit = [coordinator, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("--coordinator, --num_processes and --process_id go together; "
                       f"got {coordinator!r}, {num_processes!r}, {process_id!r}.")
    if num_processes == 1:
      return
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes,
        process_id=process_id, initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=max(10, timeout_s // 4))
  elif detected_cluster():
    jax.distributed.initialize(initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=max(10, timeout_s // 4))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def local_gpus() -> list[str]:
  """This host's GPUs as CUDA_VISIBLE_DEVICES entries ([] when there are none).

  Read from CUDA_VISIBLE_DEVICES when set, else from `nvidia-smi --list-gpus`; JAX is
  not started here, so the launcher never takes accelerator memory.
  """
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d.strip() for d in visible.split(",") if d.strip()]
  try:
    out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(l for l in out.splitlines()
                                          if l.startswith("GPU "))]


def split_devices(devices: list[str], num_processes: int) -> list[str | None]:
  """Each child's CUDA_VISIBLE_DEVICES: an equal, disjoint share of `devices` (None
  for every child when there are no GPUs)."""
  if not devices:
    return [None] * num_processes
  if len(devices) % num_processes:
    raise ConfigError(f"--local_processes={num_processes} cannot share this host's "
                      f"{len(devices)} GPUs ({','.join(devices)}) equally; use a divisor "
                      f"of {len(devices)}.")
  k = len(devices) // num_processes
  return [",".join(devices[i * k:(i + 1) * k]) for i in range(num_processes)]


def launch_local(num_processes: int, args: list[str], timeout_s: int = 120) -> int:
  """Runs `python -m cnn_jax.main ARGS` as `num_processes` processes of one job here.

  Output lines are prefixed with `[pI]`. Each process sees its own share of the
  host's GPUs (CUDA_VISIBLE_DEVICES). When one process fails, the others are sent
  SIGTERM at once (they save and stop at their next step boundary) and SIGKILL after
  `timeout_s`; SIGTERM/SIGINT to the launcher go to every process, so a preempted job
  saves and stops as a whole.

  Returns:
    0 when all succeed, else the first failing process's exit status.
  """
  coordinator = f"127.0.0.1:{free_port()}"
  shares = split_devices(local_gpus(), num_processes)
  procs = []
  for i in range(num_processes):
    cmd = [sys.executable, "-m", "cnn_jax.main", *args, f"--coordinator={coordinator}",
           f"--num_processes={num_processes}", f"--process_id={i}",
           f"--distributed_timeout={timeout_s}"]
    env = dict(os.environ)
    if shares[i] is not None:
      env["CUDA_VISIBLE_DEVICES"] = shares[i]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, env=env))
  pumps = [threading.Thread(target=_pump, args=(p, i), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _wait_all(procs, timeout_s)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    for t in pumps:
      t.join(timeout=5)
  return status


def _pump(proc, index: int) -> None:
  for line in proc.stdout:
    sys.stdout.write(f"[p{index}] {line}")
    sys.stdout.flush()


def _wait_all(procs, grace_s: int) -> int:
  failed = None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      if failed is None and p.poll() not in (None, 0):
        failed = i
        print(f"launcher: process {i} exited with status {p.returncode}; stopping the "
              "others", file=sys.stderr, flush=True)
        for q in procs:
          if q.poll() is None:
            q.send_signal(signal.SIGTERM)
        deadline = time.time() + grace_s
    if failed is not None and time.time() > deadline:
      for q in procs:
        if q.poll() is None:
          q.kill()
    time.sleep(0.1)
  codes = [p.returncode for p in procs]
  code = codes[failed] if failed is not None else next((c for c in codes if c), 0)
  return 128 - code if code < 0 else code  # Killed by signal N: 128 + N, as shells do.
