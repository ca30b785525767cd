"""README's two commands: CI must run exactly the documented test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  return re.findall(r"```bash\n(python3 -m venv .*)\n```", readme)


def test_readme_has_setup_and_test_commands():
  commands = _commands()
  assert len(commands) == 2
  assert commands[0].endswith("python -m prompt_tuning.smoke")
  assert commands[1].endswith("pytest -n 2 tests")


def test_ci_runs_readme_test_command():
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci_lines = [line.strip() for line in f]
  assert _commands()[1] in ci_lines
