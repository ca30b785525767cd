"""Sweep files: a study as data, expanded into uniquely named runs.

A sweep file is TOML (comments allowed, no code). It names base gin files and
bindings, the tasks, the seeds and a few axes; every run is one point of the
product. Bindings are gin lines exactly as `--gin_bindings` takes them.

  [sweep]
  name = "prompt_length"                       # the report's title; required
  reproduces = "Figure 3(a) ..."               # what the paper shows
  checkpoints = "T5.1.1 LM-adapted ..."        # what the runs expect
  gin_files = ["runs/prompt_tune.gin"]         # every run, in this order
  bindings = ["TRAIN_STEPS = 30000"]           # every run, after the files
  task_modules = ["prompt_tuning.tasks.super_glue"]
  tasks = ["taskless_super_glue_rte_v102"]     # -> MIXTURE_OR_TASK_NAME
  best_metric = "{task}/score"                 # or a table: task -> metric
  seeds = [0, 1, 2]                            # -> TrainConfig.seed

  [axes.length]                                # one gin macro, scalar values
  binding = "PROMPT_LENGTH"
  values = [1, 5, 20, 100, 150]
  default = 100

  [axes.model]                                 # named values: files/bindings
  default = "base"
  values.small = { gin_files = ["models/t5_1_1_lm100k_small.gin"],
                   bindings = ["INITIAL_CHECKPOINT_PATH = '...'"] }

  [studies.length]                             # one table + figure each
  vary = { model = "all", length = "all" }     # other axes stay at default
  lines = "length"                             # one line per value
  x = "parameters"                             # or an axis name
  paper = "figure1"                            # overlay the paper's numbers

Without `[studies]` the sweep is one study over every axis. A run is named
`<axis>-<value>__...__task-<task>__seed-<seed>` over all axes in file order,
so a run shared by two studies is one run, and the name of a grid point never
depends on which study asked for it. In a binding or gin file name,
`{<axis>}` (and `{task}`, `{seed}`) is replaced by the run's value of that
axis, e.g. `INITIAL_CHECKPOINT_PATH = '.../t5_1_1_lm100k_{model}/...'`, and
`${VAR}` by the environment variable (an error if unset): checkpoints that
are not public are named that way. `best_metric` may be a table of task ->
metric with a "*" entry for the other tasks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

try:
  import tomllib
except ImportError:  # Python 3.10
  import tomli as tomllib  # type: ignore[no-redef]

# Value names go into directory names: keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# `{axis}` in a binding or file name: that axis' value in the run (also
# `{task}`, `{seed}`); other braces (gin dicts) are left alone.
_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RESERVED_AXES = ("task", "seed")
X_PARAMETERS = "parameters"


class SweepError(ValueError):
  """A sweep file the user got wrong (printed as one line)."""


@dataclasses.dataclass(frozen=True)
class AxisValue:
  """One value of an axis: its name and what it adds to a run."""
  # In run names and tables.
  name: str
  # Gin files added after the sweep's own, in axis order.
  gin_files: Tuple[str, ...] = ()
  # Gin bindings added after the sweep's own.
  bindings: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Axis:
  """A dimension of the grid; `values` keep the file's order (plot order)."""
  name: str
  values: Tuple[AxisValue, ...]
  # The value a study that does not vary this axis uses.
  default: str

  def value(self, name: str) -> AxisValue:
    for value in self.values:
      if value.name == name:
        return value
    raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class Study:
  """A subset of the grid shown as one table and one figure."""
  name: str
  # axis -> the value names this study runs (others: the axis default).
  vary: Mapping[str, Tuple[str, ...]]
  # Axis drawn as separate lines (None: one line).
  lines: Optional[str]
  # 'parameters' (frozen-model size, log scale) or an axis name.
  x: str
  title: str = ""
  # Key of `experiments.paper.OVERLAYS` to draw beside the runs ("" = none).
  paper: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""
  name: str
  # axis -> value name, for every axis of the sweep.
  point: Mapping[str, str]
  task: str
  seed: int
  best_metric: str
  gin_files: Tuple[str, ...]
  bindings: Tuple[str, ...]
  # Studies this run belongs to.
  studies: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A parsed sweep file."""
  name: str
  path: str
  axes: Tuple[Axis, ...]
  studies: Tuple[Study, ...]
  tasks: Tuple[str, ...]
  seeds: Tuple[int, ...]
  gin_files: Tuple[str, ...]
  bindings: Tuple[str, ...]
  task_modules: Tuple[str, ...]
  best_metric: Mapping[str, str]
  reproduces: str = ""
  checkpoints: str = ""
  description: str = ""

  def axis(self, name: str) -> Axis:
    for axis in self.axes:
      if axis.name == name:
        return axis
    raise KeyError(name)

  def describe(self) -> Dict[str, Any]:
    """A JSON-ready description (written beside the runs for the report)."""
    return {
        "name": self.name, "path": self.path, "reproduces": self.reproduces,
        "checkpoints": self.checkpoints, "description": self.description,
        "tasks": list(self.tasks), "seeds": list(self.seeds),
        "axes": [{"name": a.name, "values": [v.name for v in a.values],
                  "default": a.default} for a in self.axes],
        "studies": [{"name": s.name, "vary": {k: list(v)
                                               for k, v in s.vary.items()},
                     "lines": s.lines, "x": s.x, "title": s.title,
                     "paper": s.paper} for s in self.studies],
    }


def _fail(path: str, message: str) -> None:
  raise SweepError(f"{path}: {message}")


def _strings(path: str, where: str, value: Any) -> Tuple[str, ...]:
  if value is None:
    return ()
  if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
    _fail(path, f"{where} must be a list of strings, got {value!r}.")
  return tuple(value)


def _expand_env(path: str, text: str) -> str:
  def replace(match):
    name = match.group(1)
    if name not in os.environ:
      _fail(path, f"${{{name}}} is not set: export {name}=... (the sweep file "
                  f"says what it must point to).")
    return os.environ[name]
  return _ENV_RE.sub(replace, text)


def _check_name(path: str, where: str, name: str) -> str:
  if not _NAME_RE.match(name):
    _fail(path, f"{where} name {name!r} must be letters, digits, '.', '_' or "
                f"'-' (it becomes part of a directory name).")
  return name


def _gin_literal(value: Any) -> str:
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, (int, float, str)):
    return repr(value)
  raise TypeError(type(value).__name__)


def _parse_axis(path: str, name: str, table: Any) -> Axis:
  where = f"[axes.{name}]"
  if not isinstance(table, dict):
    _fail(path, f"{where} must be a table.")
  _check_name(path, "axis", name)
  if name in _RESERVED_AXES:
    _fail(path, f"{where}: '{name}' is built in (use the sweep's "
                f"`{name}s` list).")
  unknown = set(table) - {"binding", "values", "default"}
  if unknown:
    _fail(path, f"{where}: unknown key(s) {sorted(unknown)}; an axis has "
                f"`values`, `default` and, for scalar values, `binding`.")
  raw = table.get("values")
  if "binding" in table:
    macro = table["binding"]
    if not isinstance(raw, list) or not raw:
      _fail(path, f"{where}: `values` must be a non-empty list of scalars.")
    values = []
    for v in raw:
      try:
        literal = _gin_literal(v)
      except TypeError:
        _fail(path, f"{where}: value {v!r} is not a number, string or bool.")
      values.append(AxisValue(_check_name(path, f"{where} value", str(v)),
                              bindings=(f"{macro} = {literal}",)))
  else:
    if not isinstance(raw, dict) or not raw:
      _fail(path, f"{where}: `values` must be a table of named values "
                  f"(or give `binding` and a list).")
    values = []
    for value_name, spec in raw.items():
      spec = spec or {}
      if not isinstance(spec, dict) or set(spec) - {"gin_files", "bindings"}:
        _fail(path, f"{where} value {value_name!r}: a table with "
                    f"`gin_files` and/or `bindings`.")
      values.append(AxisValue(
          _check_name(path, f"{where} value", value_name),
          gin_files=tuple(_expand_env(path, f) for f in _strings(
              path, f"{where} {value_name}.gin_files", spec.get("gin_files"))),
          bindings=tuple(_expand_env(path, b) for b in _strings(
              path, f"{where} {value_name}.bindings", spec.get("bindings")))))
  names = [v.name for v in values]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    _fail(path, f"{where}: duplicate value(s) {duplicates}.")
  default = str(table.get("default", names[0]))
  if default not in names:
    _fail(path, f"{where}: default {default!r} is not one of {names}.")
  return Axis(name, tuple(values), default)


def _parse_study(path: str, name: str, table: Any,
                 axes: Sequence[Axis]) -> Study:
  where = f"[studies.{name}]"
  _check_name(path, "study", name)
  if not isinstance(table, dict):
    _fail(path, f"{where} must be a table.")
  unknown = set(table) - {"vary", "lines", "x", "title", "paper"}
  if unknown:
    _fail(path, f"{where}: unknown key(s) {sorted(unknown)}.")
  by_name = {a.name: a for a in axes}
  vary = {}
  for axis_name, chosen in (table.get("vary") or {}).items():
    if axis_name not in by_name:
      _fail(path, f"{where}: vary names axis {axis_name!r}; axes are "
                  f"{sorted(by_name)}.")
    all_values = [v.name for v in by_name[axis_name].values]
    if chosen == "all":
      chosen = all_values
    chosen = [str(c) for c in (chosen if isinstance(chosen, list)
                               else [chosen])]
    missing = [c for c in chosen if c not in all_values]
    if missing:
      _fail(path, f"{where}: axis {axis_name!r} has no value(s) {missing}; "
                  f"it has {all_values}.")
    vary[axis_name] = tuple(chosen)
  lines = table.get("lines")
  if lines is not None and lines not in by_name:
    _fail(path, f"{where}: lines={lines!r} is not an axis ({sorted(by_name)}).")
  x = table.get("x", X_PARAMETERS)
  if x != X_PARAMETERS and x not in by_name:
    _fail(path, f"{where}: x={x!r} must be '{X_PARAMETERS}' or an axis "
                f"({sorted(by_name)}).")
  paper = table.get("paper", "")
  if paper:
    from prompt_tuning.experiments import paper as paper_lib  # pylint: disable=g-import-not-at-top
    if paper not in paper_lib.OVERLAYS:
      _fail(path, f"{where}: paper={paper!r}; known overlays: "
                  f"{sorted(paper_lib.OVERLAYS)}.")
  return Study(name, vary, lines, x, str(table.get("title", "")), paper)


def load(path: str) -> Sweep:
  """Reads and checks a sweep file (no gin: `validate` happens elsewhere).

  Raises:
    SweepError: an unreadable file or a malformed field, naming it.
  """
  try:
    with open(path, "rb") as f:
      data = tomllib.load(f)
  except OSError as e:
    raise SweepError(f"{path}: cannot read the sweep file ({e.strerror}).")
  except tomllib.TOMLDecodeError as e:
    raise SweepError(f"{path}: not valid TOML: {e}.") from None
  unknown = set(data) - {"sweep", "axes", "studies"}
  if unknown:
    _fail(path, f"unknown section(s) {sorted(unknown)}; a sweep file has "
                f"[sweep], [axes.*] and [studies.*].")
  head = data.get("sweep")
  if not isinstance(head, dict):
    _fail(path, "no [sweep] table.")
  known = {"name", "reproduces", "checkpoints", "description", "gin_files",
           "bindings", "task_modules", "tasks", "best_metric", "seeds"}
  if set(head) - known:
    _fail(path, f"[sweep]: unknown key(s) {sorted(set(head) - known)}.")
  name = head.get("name")
  if not isinstance(name, str):
    _fail(path, "[sweep] needs a `name`.")
  _check_name(path, "sweep", name)
  tasks = _strings(path, "[sweep] tasks", head.get("tasks"))
  if not tasks:
    _fail(path, "[sweep] needs at least one task in `tasks`.")
  seeds = head.get("seeds", [0])
  if not (isinstance(seeds, list) and seeds and
          all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
          and len(set(seeds)) == len(seeds)):
    _fail(path, f"[sweep] seeds must be distinct integers, got {seeds!r}.")
  best = head.get("best_metric", "{task}/score")
  if isinstance(best, str):
    best_metric = {t: best.replace("{task}", t) for t in tasks}
  elif isinstance(best, dict):
    missing = [t for t in tasks if t not in best and "*" not in best]
    if missing:
      _fail(path, f"[sweep] best_metric names no metric for {missing} (add "
                  f"them, or a \"*\" entry for every other task).")
    best_metric = {t: str(best.get(t, best.get("*"))).replace("{task}", t)
                   for t in tasks}
  else:
    _fail(path, "[sweep] best_metric must be a string or a table.")
  axes = tuple(_parse_axis(path, n, t)
               for n, t in (data.get("axes") or {}).items())
  studies = tuple(_parse_study(path, n, t, axes)
                  for n, t in (data.get("studies") or {}).items())
  if not studies:
    studies = (Study(name, {a.name: tuple(v.name for v in a.values)
                            for a in axes},
                     axes[0].name if axes else None, X_PARAMETERS),)
  return Sweep(
      name=name, path=path, axes=axes, studies=studies, tasks=tasks,
      seeds=tuple(seeds),
      gin_files=tuple(_expand_env(path, f) for f in _strings(
          path, "[sweep] gin_files", head.get("gin_files"))),
      bindings=tuple(_expand_env(path, b) for b in _strings(
          path, "[sweep] bindings", head.get("bindings"))),
      task_modules=_strings(path, "[sweep] task_modules",
                            head.get("task_modules")),
      best_metric=best_metric, reproduces=str(head.get("reproduces", "")),
      checkpoints=str(head.get("checkpoints", "")),
      description=str(head.get("description", "")))


def run_name(point: Mapping[str, str], task: str, seed: int,
             axes: Sequence[str]) -> str:
  """`<axis>-<value>__...__task-<task>__seed-<seed>`: stable and unique."""
  parts = [f"{a}-{point[a]}" for a in axes]
  return "__".join(parts + [f"task-{task}", f"seed-{seed}"])


def expand(sweep: Sweep) -> List[Run]:
  """Every run of the sweep, in a fixed order (studies, then grid order).

  A grid point that several studies share is one run, listed where it first
  appears, with all its studies.
  """
  axis_names = [a.name for a in sweep.axes]
  order: List[str] = []
  points: Dict[str, Tuple[Dict[str, str], str, int]] = {}
  memberships: Dict[str, List[str]] = {}
  for study in sweep.studies:
    choices = [study.vary.get(a.name, (a.default,)) for a in sweep.axes]
    for combo in itertools.product(*choices):
      point = dict(zip(axis_names, combo))
      for task in sweep.tasks:
        for seed in sweep.seeds:
          name = run_name(point, task, seed, axis_names)
          if name not in points:
            points[name] = (point, task, seed)
            memberships[name] = []
            order.append(name)
          if study.name not in memberships[name]:
            memberships[name].append(study.name)
  runs = []
  for name in order:
    point, task, seed = points[name]
    values = [sweep.axis(a).value(point[a]) for a in axis_names]
    fields = dict(point, task=task, seed=str(seed))

    def fill(text, fields=fields):
      return _FIELD_RE.sub(lambda m: fields.get(m.group(1), m.group(0)), text)

    gin_files = tuple(fill(f) for f in sweep.gin_files +
                      tuple(f for v in values for f in v.gin_files))
    bindings = (tuple(fill(b) for b in sweep.bindings +
                      tuple(b for v in values for b in v.bindings)) +
                (f"MIXTURE_OR_TASK_NAME = {task!r}",
                 f"TrainConfig.best_metric = {sweep.best_metric[task]!r}",
                 f"TrainConfig.seed = {seed}"))
    runs.append(Run(name=name, point=point, task=task, seed=seed,
                    best_metric=sweep.best_metric[task], gin_files=gin_files,
                    bindings=bindings, studies=tuple(memberships[name])))
  return runs


def run_dir(root: str, run: Run) -> str:
  return os.path.join(root, run.name)


def train_args(run: Run, root: str, task_modules: Sequence[str]) -> List[str]:
  """The `python -m prompt_tuning.train` arguments of one run."""
  args = [f"--gin_file={f}" for f in run.gin_files]
  args += [f"--task_module={m}" for m in task_modules]
  args += [f"--gin_bindings={b}" for b in run.bindings]
  args.append(f"--gin_bindings=MODEL_DIR = {run_dir(root, run)!r}")
  return args
