"""`python -m cnn_jax.bench`: see the package docstring."""

import sys

from cnn_jax.bench import cli

if __name__ == "__main__":
  sys.exit(cli.main())
