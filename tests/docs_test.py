"""The documentation site (docs/, Sphinx + MyST) builds, strictly.

CI builds it here: warnings are errors and every reference must resolve
(`sphinx-build -W --keep-going -n`), so a link to a page or heading that does
not exist fails the build. The second test shows that it does, on a copy of
the pages with one broken link put in. Nothing reaches the network.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(source, out):
  """Runs sphinx-build as CI does; returns (exit status, its output)."""
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q",
       "-b", "html", "-d", os.path.join(out, ".doctrees"), source, out],
      capture_output=True, text=True, timeout=600)
  return result.returncode, result.stdout + result.stderr


def test_docs_build_without_warnings(tmp_path):
  status, output = _build(os.path.join(ROOT, "docs"), str(tmp_path))
  assert status == 0, output[-5000:]
  for page in ("index", "getting_started", "training", "reliability",
               "clusters", "mini_study/summary"):
    assert (tmp_path / f"{page}.html").exists(), page
  # The front page is the README.
  with open(tmp_path / "index.html", encoding="utf-8") as f:
    front = f.read()
  assert "Two commands" in front and 'href="getting_started.html"' in front


@pytest.mark.parametrize("page, broken, named", [
    ("docs/tasks.md", "[x](training.md#no-such-heading)", "no-such-heading"),
    ("docs/tasks.md", "[x](no_such_page.md)", "no_such_page.md"),
    ("docs/tasks.md", "[x](#no-such-heading-here)", "no-such-heading-here"),
    ("README.md", "[x](docs/no_such_page.md)", "no_such_page"),
])
def test_a_broken_link_fails_the_build(tmp_path, page, broken, named):
  copy = tmp_path / "repo"
  shutil.copytree(os.path.join(ROOT, "docs"), copy / "docs",
                  ignore=shutil.ignore_patterns("_build", "__pycache__"))
  shutil.copy(os.path.join(ROOT, "README.md"), copy / "README.md")
  with open(copy / page, "a", encoding="utf-8") as f:
    f.write(f"\nSee {broken}.\n")
  status, output = _build(str(copy / "docs"), str(tmp_path / "html"))
  assert status != 0
  assert named in output and "xref_missing" in output, output[-3000:]
