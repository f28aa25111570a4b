"""`python -m benchmarks`: see the package docstring."""

import sys

from benchmarks import cli

if __name__ == "__main__":
  sys.exit(cli.main())
