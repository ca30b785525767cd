"""The README and the documentation pages (docs/) held to the code.

CI runs exactly the README's test command; the quickstart test runs its
quickstart command; the model and decoding snippets run; the mini-study's
numbers are the committed report's. And every command on every page, in code
blocks and in inline code that starts with `python`, names things that exist:
the modules it runs, the subcommands and flags their `--help` lists, gin files
that parse with the command's bindings as the command itself would parse them,
the `setup.py` extras and `.ci/constraints.txt` pins it installs, and the
repository paths it mentions. (tests/docs_test.py builds the site, so broken
links fail there.)
"""

import ast
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import gin
import pytest

from prompt_tuning import configurables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
# The gin entry points and the configurable each one calls.
GIN_ENTRIES = {"prompt_tuning.train": "train",
               "prompt_tuning.eval": "evaluate",
               "prompt_tuning.infer": "infer"}
# Top-level folders whose paths a page may mention; such a path must exist.
REPO_DIRS = (".ci", "docs", "gin_configs", "launch", "prompt_tuning", "tasks",
             "tests")
SHELL_LANGUAGES = ("bash", "sh", "shell", "")


def _read(page):
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    return f.read()


def _blocks(text, languages):
  return [body for lang, body in
          re.findall(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
          if lang in languages]


def _commands():
  """The README's `python3 -m venv ...` one-line blocks: set-up, tests."""
  return re.findall(r"```bash\n(python3 -m venv .*)\n```", _read("README.md"))


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


def test_model_and_decoding_snippets_run():
  """The model and decoding snippets (docs/model.md) run as written, in
  order."""
  blocks = [b for page in PAGES for b in _blocks(_read(page), ("python",))]
  namespace = {}
  model_block = next(b for b in blocks if "t5_config(\"t5_1_1_tiny\")" in b)
  decode_block = next(b for b in blocks if "decoding.greedy_decode" in b)
  exec(model_block, namespace)  # pylint: disable=exec-used
  assert namespace["logits"].shape == (1, 3, 384)
  exec(decode_block, namespace)  # pylint: disable=exec-used
  assert namespace["tokens"].shape == (1, 4)
  assert namespace["beams"].shape == (1, 4, 4)
  assert namespace["log_likelihood"].shape == (1,)


def test_mini_study_numbers_are_the_reports():
  """Every mean ± std in the mini-study section (docs/sweeps.md) is in the
  committed report it was copied from (docs/mini_study/summary.md)."""
  page = _read(os.path.join("docs", "sweeps.md"))
  section = page[page.index("## The mini-study"):]
  section = section[:section.index("\n## ")] if "\n## " in section else section
  report = _read(os.path.join("docs", "mini_study", "summary.md"))
  quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d", section)
  assert len(quoted) == 24  # 3 sizes x 6 methods, 6 ablation cells
  assert [q for q in quoted if f"| {q} |" not in report] == []
  for figure in ("size.png", "length.png", "init.png"):
    assert os.path.exists(os.path.join(ROOT, "docs", "mini_study", figure))


# --- Every command on every page ------------------------------------------


def _shell_lines(text):
  """Command lines of a page: shell code blocks (continuations joined,
  `NAME=value` lines substituted into later `$NAME`) and inline code that
  starts with `python`."""
  lines = []
  for body in _blocks(text, SHELL_LANGUAGES):
    variables = {}
    for line in body.replace("\\\n", " ").splitlines():
      assignment = re.fullmatch(r"([A-Z_]+)=\"([^\"]*)\"", line.strip())
      if assignment:
        variables[assignment.group(1)] = assignment.group(2)
        continue
      for name, value in variables.items():
        line = line.replace(f"${name}", value)
      if line.strip():
        lines.append(line)
  for span in re.findall(r"`(python3? [^`]+)`", text):
    if "<" not in span:  # `python -m prompt_tuning.prompt_tools <command>`
      lines.append(" ".join(span.split()))
  return lines


def _segments(line):
  """One shell line -> its simple commands, as token lists."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
  lexer.whitespace_split = True
  lexer.commenters = "#"
  try:
    tokens = list(lexer)
  except ValueError:  # unbalanced quotes: not a command
    return []
  segments, current = [], []
  for token in tokens:
    if token and set(token) <= set(";&|()<>"):
      segments.append(current)
      current = []
    else:
      current.append(token)
  segments.append(current)
  out = []
  for tokens in segments:
    while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):  # VAR=x cmd
      tokens = tokens[1:]
    tokens = [t for t in tokens if t != "..."]
    if tokens:
      out.append(tokens)
  return out


def _python_runs(tokens):
  """`python -m MOD ARGS` / `python SCRIPT ARGS` -> [(target, args)], the
  command after `--` of launch/local_processes.py included."""
  if tokens[0] not in ("python", "python3") or len(tokens) < 2:
    return []
  if tokens[1] == "-m":
    target, args = tokens[2], tokens[3:]
  else:
    target, args = tokens[1], tokens[2:]
  if target == "venv":
    return []
  if target.endswith("local_processes.py") and "--" in args:
    i = args.index("--")
    return [(target, args[:i])] + _python_runs(["python"] + args[i + 1:])
  if target == "prompt_tuning.infer" and args[:1] == ["--mixed"]:
    return [("prompt_tuning.prompt_tools", ["infer"] + args[1:])]
  return [(target, args)]


def _launcher_train_args(tokens):
  """Train flags handed to the pod launchers, which pass them to
  `python -m prompt_tuning.train` on every worker."""
  for i, token in enumerate(tokens):
    if token.endswith("launch/tpu_vm.sh") and "--" in tokens[i:]:
      return tokens[tokens.index("--", i) + 1:]
    if token.endswith("launch/slurm.sbatch") and "--commands" not in tokens:
      return tokens[i + 1:]
  return None


def _documented_runs():
  """{target: [(page, line, args)]} over every page."""
  runs = {}
  for page in PAGES:
    for line in _shell_lines(_read(page)):
      for tokens in _segments(line):
        found = _python_runs(tokens)
        train_args = _launcher_train_args(tokens)
        if train_args is not None:
          found.append(("prompt_tuning.train", train_args))
        for target, args in found:
          runs.setdefault(target, []).append((page, line, args))
  return runs


RUNS = _documented_runs()


def _subcommands(args):
  """The subcommand(s) a command names: `infer`, or `plan/run/emit` in
  prose for several."""
  if args and re.fullmatch(r"[a-z][a-z-]*(/[a-z][a-z-]*)*", args[0]):
    return args[0].split("/")
  return [None]


@functools.lru_cache(maxsize=None)
def _help(target, subcommand):
  """The flags that `--help` (absl: `--helpfull`) of an entry point lists."""
  if target.endswith(".py"):
    command = [sys.executable, os.path.join(ROOT, target)]
  else:
    command = [sys.executable, "-m", target]
  command += [subcommand] if subcommand else []
  command += ["--helpfull" if target in GIN_ENTRIES else "--help"]
  if target.endswith("local_processes.py"):
    command.append("--")  # it wants the command it runs after `--`
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  # absl's --helpfull exits 1 after printing the flags; argparse's exits 0.
  assert result.returncode == (1 if target in GIN_ENTRIES else 0) and (
      "--" in result.stdout), (
          f"{' '.join(command[1:])} fails: {result.stderr[-2000:]}")
  return set(re.findall(r"--(?:\[no\])?([A-Za-z][\w-]*)", result.stdout))


def _flags(args):
  return [a[2:].split("=", 1)[0] for a in args
          if a.startswith("--") and len(a) > 2 and not a.startswith("--gin.")]


def _gin_parse(args, entry):
  """Parses a command's gin files and bindings as the command would.

  A command shortened with `...` leaves required macros out: each one gin
  reports is bound to a placeholder and the parse retried."""
  files, bindings, modules = [], [], []
  for i, arg in enumerate(args):
    value = arg.split("=", 1)[1] if "=" in arg else (
        args[i + 1] if i + 1 < len(args) else "")
    if arg.startswith("--gin_file"):
      files.append(value)
    elif arg.startswith("--gin_bindings"):
      bindings.append(value)
    elif arg.startswith("--gin."):
      key, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{key} = {value}")
    elif arg.startswith("--task_module"):
      modules.append(value)
  for module in modules:
    __import__(module)
  placeholders = []
  for _ in range(10):
    try:
      configurables.parse(files, bindings + placeholders, entry=entry,
                          also_read=("MODEL_DIR",))
      return
    except ValueError as e:
      required = re.match(r"(\w+)/macro\.value set to `%gin\.REQUIRED`",
                          str(e))
      if not required:
        raise
      placeholders.append(f"{required.group(1)} = 'placeholder'")
    finally:
      gin.clear_config()
  raise AssertionError(f"too many required macros: {placeholders}")


@pytest.mark.parametrize("target", sorted(RUNS))
def test_documented_commands_run_real_entry_points(target):
  """Each `python -m ...` / `python SCRIPT` on any page: the module or
  script exists, its subcommands and flags are in its `--help`, and a gin
  entry point's gin files and bindings parse."""
  if target.endswith(".py"):
    assert os.path.isfile(os.path.join(ROOT, target)), target
  else:
    path = os.path.join(ROOT, *target.split("."))
    if target.startswith("prompt_tuning.tasks"):
      path = os.path.join(ROOT, "tasks", *target.split(".")[2:])
    assert (os.path.isfile(path + ".py") or
            os.path.isfile(os.path.join(path, "__main__.py"))), (
                f"python -m {target}: no such module")
  problems = []
  for page, line, args in RUNS[target]:
    for subcommand in _subcommands(args):
      known = _help(target, subcommand)
      unknown = [f for f in _flags(args) if f not in known]
      if unknown:
        problems.append(f"{page}: {line}: unknown flags {unknown}")
    if target in GIN_ENTRIES:
      try:
        _gin_parse(args, GIN_ENTRIES[target])
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f"{page}: {line}: {type(e).__name__}: {e}")
  assert problems == []


def _extras():
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if (isinstance(node, ast.Assign) and
        getattr(node.targets[0], "id", "") == "EXTRAS_REQUIRE"):
      return set(ast.literal_eval(node.value))
  raise AssertionError("setup.py has no EXTRAS_REQUIRE")


def _pins():
  with open(os.path.join(ROOT, ".ci", "constraints.txt"),
            encoding="utf-8") as f:
    return {line.strip().lower() for line in f}


def _repo_path(token):
  """A token naming a repository path (no placeholders), else None."""
  token = token.rstrip(".,;:)")
  if not re.fullmatch(r"[\w./-]+", token) or "..." in token:
    return None
  first = token.split("/")[0]
  return token if first in REPO_DIRS and "/" in token else None


@pytest.mark.parametrize("page", PAGES)
def test_page_commands_name_what_exists(page):
  """Every command line's repository paths, pip extras and pins exist, and so
  does every repository path in the page's inline code."""
  text = _read(page)
  extras, pins = _extras(), _pins()
  problems = []
  for line in _shell_lines(text):
    for tokens in _segments(line):
      for token in tokens:
        path = _repo_path(token)
        if path and not os.path.exists(os.path.join(ROOT, path)):
          problems.append(f"{line}: no {path}")
      if tokens[:2] == ["pip", "install"] or tokens[1:3] == ["-m", "pip"]:
        for token in tokens:
          wanted = re.fullmatch(r"\.\[([\w,-]+)\]", token)
          if wanted:
            missing = set(wanted.group(1).split(",")) - extras
            if missing:
              problems.append(f"{line}: no extra {sorted(missing)} in setup.py")
          if "-c" in tokens and re.fullmatch(r"[\w.-]+==[\w.]+", token):
            if token.lower() not in pins:
              problems.append(f"{line}: {token} not in .ci/constraints.txt")
  for span in re.findall(r"`([^`\n]+)`", text):
    for token in span.split():
      path = _repo_path(token)
      if path and "{" not in span and "<" not in path and "*" not in path:
        if not os.path.exists(os.path.join(ROOT, path)):
          problems.append(f"`{span}`: no {path}")
  gin_files = set(re.findall(r"`((?:models|prompts|runs)/\w+\.gin)`", text))
  problems += [f"no gin_configs/{f}" for f in sorted(gin_files)
               if not os.path.exists(os.path.join(ROOT, "gin_configs", f))]
  assert problems == []


def test_every_page_has_commands_checked():
  """The checks above see the commands: not a parser that finds nothing."""
  targets = set(RUNS)
  for target in ("prompt_tuning.train", "prompt_tuning.eval",
                 "prompt_tuning.infer", "prompt_tuning.prompt_tools",
                 "prompt_tuning.sweep", "prompt_tuning.report",
                 "prompt_tuning.bench", "prompt_tuning.smoke",
                 "prompt_tuning.tasks", "launch/local_processes.py"):
    assert target in targets, target
  pages = {page for runs in RUNS.values() for page, _, _ in runs}
  for page in ("README.md", "docs/training.md", "docs/prompts.md",
               "docs/sweeps.md", "docs/clusters.md", "docs/performance.md"):
    assert page in pages, page
