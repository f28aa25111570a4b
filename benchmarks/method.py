"""How the bench measures: steady state detected from windows, spreads over
repetitions, and the machine's load around the measurements. Standard library only.
"""

import dataclasses
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

# Consecutive windows whose images/s differ by at most this share of the larger agree.
TOLERANCE = 0.04
# A measurement gives up after this many windows, or once its windows have taken this
# long (at least two windows), and is then reported as not steady.
MAX_WINDOWS = 10
MAX_SECONDS = 60.0
# Other processes using more than this share of the machine make a measurement "busy".
BUSY_SHARE = 0.05


@dataclasses.dataclass
class SteadyState:
  """Feeds on the timings of consecutive windows of a known number of images until two
  in a row agree within `tolerance`; the windows before them are discarded (warm-up:
  compilation, caches, thread pools). Gives up after `max_windows`, or after
  `max_seconds` of windows (but never before two windows).

  Call `add(images, seconds)` after each window until it returns True, then `result()`.
  """
  tolerance: float = TOLERANCE
  max_windows: int = MAX_WINDOWS
  max_seconds: float = MAX_SECONDS
  images: list[int] = dataclasses.field(default_factory=list)
  seconds: list[float] = dataclasses.field(default_factory=list)

  @property
  def rates(self) -> list[float]:
    return [n / s for n, s in zip(self.images, self.seconds)]

  @property
  def steady(self) -> bool:
    """Whether the last two windows agree."""
    if len(self.seconds) < 2:
      return False
    a, b = self.rates[-2:]
    return abs(a - b) <= self.tolerance * max(a, b)

  def add(self, images: int, seconds: float) -> bool:
    """Records one window; True when the measurement is done (steady, or the cap)."""
    if seconds <= 0:
      raise ValueError(f"A window of {images} images took {seconds} s; times must be "
                       "positive (a clock read in the wrong order?).")
    self.images.append(images)
    self.seconds.append(seconds)
    return (self.steady or len(self.seconds) >= self.max_windows
            or (len(self.seconds) >= 2 and sum(self.seconds) >= self.max_seconds))

  def result(self) -> dict:
    """images/s of the last two windows together, the windows discarded before them,
    and whether they agreed (False: a cap was reached first; the value is then the
    last two windows', flagged)."""
    if len(self.seconds) < 2:
      raise ValueError(f"{len(self.seconds)} window(s) timed; steady state needs two.")
    return {"images_per_sec": sum(self.images[-2:]) / sum(self.seconds[-2:]),
            "steady": self.steady, "discarded": len(self.seconds) - 2,
            "windows": self.rates, "window_images": self.images[-1],
            "first_window_sec": self.seconds[0]}


def spread(values: list[float]) -> dict:
  """Median, min and max of repeated measurements."""
  if not values:
    raise ValueError("No measurements to summarise.")
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "n": len(values)}


def best_rate(measurements: list[dict]) -> float:
  """The highest images/s among steady `measurements` (all of them if none is steady):
  each side's best, the figure least disturbed by anything else on the machine, which
  the ratio that counts compares (a noisy repetition of either side cannot move it)."""
  steady = [m for m in measurements if m["steady"]] or measurements
  return max(m["images_per_sec"] for m in steady)


def summarize_reps(reps: list[dict]) -> dict:
  """A row's repetitions (`SteadyState.result()`s) as a spread of images/s, with the
  windows discarded and whether every repetition reached steady state."""
  return {"images_per_sec": spread([r["images_per_sec"] for r in reps]),
          "discarded": [r["discarded"] for r in reps],
          "steady": all(r["steady"] for r in reps), "reps": reps}


def _proc_stat() -> tuple[int, int, int] | None:
  """(busy, steal, total) CPU jiffies of the machine since boot, None off Linux."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  steal = fields[7] if len(fields) > 7 else 0
  total = sum(fields[:8])
  return total - idle - steal, steal, total


def _own_cpu_sec() -> float:
  """CPU seconds of this process and of its children that have ended."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclasses.dataclass(frozen=True)
class LoadSnapshot:
  """The machine's CPU counters at one moment (see `load_between`)."""
  time: float
  stat: tuple[int, int, int] | None
  own_cpu_sec: float
  load_average: tuple[float, float, float]

  @classmethod
  def take(cls) -> "LoadSnapshot":
    return cls(time.perf_counter(), _proc_stat(), _own_cpu_sec(), os.getloadavg())


def load_between(start: LoadSnapshot, end: LoadSnapshot) -> dict:
  """What the machine did between two snapshots, as shares of all its cores.

  `others_share` is the CPU time of everything but this process and the children it
  has waited for (the bench's workers, once they ended), over the elapsed time of all
  cores: the load the bench competed with. `steal_share` is time the hypervisor gave
  to other machines.
  """
  elapsed = end.time - start.time
  out = {"seconds": elapsed, "load_average_before": list(start.load_average),
         "load_average_after": list(end.load_average)}
  if start.stat and end.stat and elapsed > 0:
    busy, steal, total = (b - a for a, b in zip(start.stat, end.stat))
    tick = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    ours = end.own_cpu_sec - start.own_cpu_sec
    out.update(busy_share=busy / max(total, 1), steal_share=steal / max(total, 1),
               others_share=max(0.0, busy / tick - ours) / (elapsed * cores))
  out["busy"] = out.get("others_share", 0.0) > BUSY_SHARE
  return out


def idle_check(seconds: float = 2.0) -> dict:
  """The machine's load over `seconds` while the bench does nothing."""
  start = LoadSnapshot.take()
  time.sleep(seconds)
  return load_between(start, LoadSnapshot.take())


def machine() -> dict:
  """CPU model, cores and software versions."""
  cpu = platform.processor() or platform.machine()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Model name:\s*(.+)", lscpu)
    cpu = found.group(1).strip() if found else cpu
    flags = re.search(r"Flags:\s*(.+)", lscpu)
    avx512 = bool(flags and "avx512f" in flags.group(1).split())
  except OSError:
    avx512 = None
  return {"cpu": cpu, "cores": os.cpu_count(), "avx512": avx512,
          "python": platform.python_version(), "platform": platform.platform(),
          "executable": sys.executable}


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
