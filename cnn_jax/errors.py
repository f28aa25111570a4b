"""The project's own error types: each is a mistake a user can fix, reported in one line
with what to change. Anything else is a bug and keeps its traceback."""


class Error(Exception):
  """An error of cnn_jax that the command line reports as one line."""


class ConfigError(Error, ValueError):
  """A config that cannot work, naming the field, its value and what is allowed."""


class WorkdirError(Error, PermissionError):
  """A workdir that cannot be used: not writable, or held by another run."""


class DivergenceError(Error, FloatingPointError):
  """Training diverged (NaN, inf, or a loss far above its start): the run stopped."""
