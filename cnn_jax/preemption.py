"""Turning SIGTERM/SIGINT into a clean stop at the next step boundary."""

import contextlib
import os
import signal
import sys
import threading

# Exit status of a run that stopped on a signal after saving a checkpoint: EX_TEMPFAIL,
# "try again later". Running the same command again continues from that checkpoint.
PREEMPTED_EXIT_CODE = 75
# Exit status after a third signal: 128 + SIGINT, as a shell reports an interrupt.
FORCED_EXIT_CODE = 130


def signal_name(signum: int | None) -> str:
  return signal.Signals(signum).name if signum else "a signal to another process"


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int | None, saved: bool = True):
    cause = signal_name(signum)
    what = (f"after saving the checkpoint of step {step}" if saved else
            f"before training, at step {step} (nothing new to save)")
    super().__init__(f"stopped by {cause} {what}; run the same command again to "
                     "resume")
    self.step = step
    self.signum = signum


class StopRequest:
  """Set by a signal; the training loop polls it between dispatches."""

  def __init__(self):
    self.signum: int | None = None
    self.count = 0  # Signals received.

  def __bool__(self) -> bool:
    return self.signum is not None


def agreed(request: StopRequest) -> bool:
  """Whether any process was asked to stop; all processes then stop at the same step.

  A collective (a few bytes) when there are several processes; free otherwise.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return bool(request)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.int32(bool(request)))
  return bool(np.asarray(flags).any())


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGTERM, signal.SIGINT)):
  """Yields a StopRequest that SIGTERM/SIGINT set instead of killing the process.

  A second signal is absorbed, so the save is never cut short; a third exits at once
  (status 130), without saving, for a run that must stop now. Outside the main thread
  (where Python cannot install handlers) it yields a request that is never set.

  The request names the signal that arrived first. Python runs the handlers of signals
  that arrived together (while the main thread was in XLA, say) by signal number, so
  SIGINT's before SIGTERM's; the order of arrival comes from the wakeup fd, to which
  the C-level handler writes each signal's number as it arrives.
  """
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  arrivals, wakeup = os.pipe()
  for fd in arrivals, wakeup:
    os.set_blocking(fd, False)

  def first_arrived(signum):
    try:
      arrived = os.read(arrivals, 256)
    except BlockingIOError:  # Nothing written: another wakeup fd was set meanwhile.
      arrived = b""
    return next((s for s in arrived if s in signums), signum)

  def handler(signum, frame):
    del frame
    request.count += 1
    first = first_arrived(signum)  # Drains the pipe on every signal.
    if request.signum is None:
      request.signum = signum = first
      print(f"\n{signal.Signals(signum).name}: finishing the current steps, then saving "
            "a checkpoint and stopping (a third signal stops at once, without saving)",
            flush=True)
    elif request.count >= 3:
      print(f"\n{signal.Signals(signum).name} again: stopping now, without saving; the "
            "newest complete checkpoint is kept", flush=True)
      sys.stdout.flush()
      os._exit(FORCED_EXIT_CODE)

  previous = {s: signal.signal(s, handler) for s in signums}
  previous_wakeup = signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
  try:
    yield request
  finally:
    signal.set_wakeup_fd(previous_wakeup)
    for s, h in previous.items():
      signal.signal(s, h)
    os.close(arrivals)
    os.close(wakeup)
