"""`python -m prompt_tuning.tasks list`: the registered tasks and mixtures."""

import sys

from prompt_tuning.data import registry

if __name__ == "__main__":
  sys.exit(registry.main())
