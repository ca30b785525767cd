"""`python -m prompt_tuning.tasks list`: the registered tasks and mixtures."""

import sys

from prompt_tuning import task_registry

if __name__ == "__main__":
  sys.exit(task_registry.main())
