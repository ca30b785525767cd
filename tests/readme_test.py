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
  assert commands[0].endswith(
      "python -m prompt_tuning.train --gin_file=runs/quickstart.gin")
  assert commands[1].endswith("pytest -n 2 tests")


def test_ci_runs_readme_test_command():
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci_lines = [line.strip() for line in f]
  assert _commands()[1] in ci_lines


def test_readme_model_and_decoding_snippets_run():
  """The README's model and decoding snippets run as written, in order."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)
  namespace = {}
  model_block = next(b for b in blocks if "t5_config(\"t5_1_1_tiny\")" in b)
  decode_block = next(b for b in blocks if "decoding.greedy_decode" in b)
  exec(model_block, namespace)  # pylint: disable=exec-used
  assert namespace["logits"].shape == (1, 3, 384)
  exec(decode_block, namespace)  # pylint: disable=exec-used
  assert namespace["tokens"].shape == (1, 4)
  assert namespace["beams"].shape == (1, 4, 4)
  assert namespace["log_likelihood"].shape == (1,)


def test_readme_mini_study_numbers_are_the_reports():
  """Every mean ± std in README's mini-study section is in the committed
  report it was copied from (docs/mini_study/summary.md)."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme[readme.index("### The mini-study"):]
  section = section[:section.index("\n## ")]
  with open(os.path.join(ROOT, "docs", "mini_study", "summary.md"),
            encoding="utf-8") as f:
    report = f.read()
  quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d", section)
  assert len(quoted) == 12
  assert [q for q in quoted if f"| {q} |" not in report] == []
  for figure in ("size.png", "length.png", "init.png"):
    assert os.path.exists(os.path.join(ROOT, "docs", "mini_study", figure))
