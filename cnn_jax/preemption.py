"""Turning SIGTERM/SIGINT into a clean stop at the next step boundary."""

import contextlib
import signal
import threading

# Exit status of a run that stopped on a signal after saving a checkpoint: EX_TEMPFAIL,
# "try again later". Running the same command again continues from that checkpoint.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} after saving the "
                     f"checkpoint of step {step}; run the same command again to resume")
    self.step = step
    self.signum = signum


class StopRequest:
  """Set by a signal; the training loop polls it between dispatches."""

  def __init__(self):
    self.signum: int | None = None

  def __bool__(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGTERM, signal.SIGINT)):
  """Yields a StopRequest that SIGTERM/SIGINT set instead of killing the process.

  Further signals while the run saves are absorbed, so the save is never cut short.
  Outside the main thread (where Python cannot install handlers) it yields a request
  that is never set.
  """
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def handler(signum, frame):
    del frame
    if request.signum is None:
      request.signum = signum
      print(f"\n{signal.Signals(signum).name}: finishing the current steps, then saving "
            "a checkpoint and stopping", flush=True)

  previous = {s: signal.signal(s, handler) for s in signums}
  try:
    yield request
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
