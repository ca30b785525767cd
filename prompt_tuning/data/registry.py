"""The project's catalogue of SeqIO tasks: families, label words, listing.

Task modules (`prompt_tuning.tasks.<module>`) register through `add_task` /
`add_mixture`, which add to seqio's registries once per process (a second
import under another name is a no-op) and record what seqio has no slot for:
the family a task belongs to, a one-line description, and the label words of
a classification task. The label words serve the class-label prompt
initialiser (`class_labels(name)`) and rank classification. `main` is the
`python -m prompt_tuning.tasks` command line: `list`, `labels NAME`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import seqio

# Modules of `prompt_tuning.tasks` that `import_builtin` registers.
BUILTIN_MODULES = ("super_glue", "glue", "mrqa", "paraphrase",
                   "custom_example", "quickstart")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the catalogue knows about one registered task or mixture."""

  # The SeqIO name.
  name: str
  # Group for listing, e.g. 'super_glue', 'taskless_super_glue', 'mrqa'.
  family: str
  # 'task' or 'mixture'.
  kind: str
  # Label word of each class id, in class order; () for free-form targets.
  class_labels: Tuple[str, ...] = ()
  # One line for `list`.
  description: str = ""


_INFOS: Dict[str, TaskInfo] = {}


def add_task(name: str, *, family: str, description: str = "",
             class_labels: Sequence[str] = (), **task_kwargs) -> None:
  """Registers a seqio Task (unless the name is taken) and its catalogue entry.

  Args:
    name: the task name.
    family: listing group.
    description: one line for `list`.
    class_labels: label words, in class-id order (classification tasks).
    **task_kwargs: `seqio.TaskRegistry.add` arguments (source, preprocessors,
      output_features, postprocess_fn, metric_fns, ...).
  """
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, **task_kwargs)
  _INFOS.setdefault(name, TaskInfo(name, family, "task", tuple(class_labels),
                                   description))


def add_mixture(name: str, tasks: Sequence, *, family: str,
                description: str = "",
                default_rate: Optional[float] = None) -> None:
  """Registers a seqio Mixture (unless the name is taken) and its entry.

  Args:
    name: the mixture name.
    tasks: task names or (name, rate) pairs, as `seqio.MixtureRegistry.add`.
    family: listing group.
    description: one line for `list`.
    default_rate: rate of the tasks given without one.
  """
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)
  names = [t if isinstance(t, str) else t[0] for t in tasks]
  labels: List[str] = []
  for task in names:
    for label in class_labels(task):
      if label not in labels:
        labels.append(label)
  _INFOS.setdefault(name, TaskInfo(name, family, "mixture", tuple(labels),
                                   description))


def import_modules(modules: Sequence[str]) -> None:
  """Imports task modules (which register their tasks).

  Raises:
    ValueError: one line naming a module that cannot be imported.
  """
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(
          f"cannot import task module {module!r}: {e}") from None


def import_builtin(modules: Iterable[str] = BUILTIN_MODULES) -> None:
  """Imports (so registers) the project's task modules."""
  for module in modules:
    importlib.import_module(f"prompt_tuning.tasks.{module}")


def get(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered seqio Mixture or Task `name` (a Mixture wins a tie).

  Raises:
    ValueError: (one line) if nothing is registered under `name`; it lists
      up to 5 close matches and says how tasks get registered.
  """
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  known = sorted(set(seqio.TaskRegistry.names()) |
                 set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = f"close matches: {', '.join(close)}" if close else "no close matches"
  raise ValueError(
      f"No SeqIO task or mixture named {name!r} ({hint}; {len(known)} "
      "registered). Tasks are registered by importing the module that defines "
      "them: pass it with the CLI's --task_module flag (built-in: "
      "prompt_tuning.tasks.<module>; `python -m prompt_tuning.tasks list` "
      "shows the names), or import it first.")


def info(name: str) -> TaskInfo:
  """The catalogue entry of a registered task or mixture.

  Tasks registered straight through seqio (not through `add_task`) get an
  entry without labels.

  Raises:
    ValueError: (one line) if seqio knows no task or mixture `name`.
  """
  if name in _INFOS:
    return _INFOS[name]
  provider = get(name)
  kind = "mixture" if isinstance(provider, seqio.Mixture) else "task"
  return TaskInfo(name, "other", kind)


def class_labels(name: str) -> Tuple[str, ...]:
  """Label words of a task (a mixture: of its tasks, first seen first).

  Empty for tasks with free-form targets (QA, ReCoRD, WSC, STS-B).
  """
  return info(name).class_labels


def infos(family: Optional[str] = None) -> List[TaskInfo]:
  """Catalogue entries, sorted by name, optionally of one family."""
  return sorted((i for i in _INFOS.values()
                 if family is None or i.family == family),
                key=lambda i: i.name)


def _print_list(family: Optional[str]) -> int:
  entries = infos(family)
  if not entries:
    print(f"error: no registered tasks in family {family!r}; families: "
          f"{', '.join(sorted({i.family for i in infos()}))}",
          file=sys.stderr)
    return 2
  width = max(len(i.name) for i in entries)
  for i in entries:
    labels = f"  labels: {', '.join(i.class_labels)}" if i.class_labels else ""
    print(f"{i.name:<{width}}  {i.kind:<7}  {i.family:<20}  "
          f"{i.description}{labels}")
  print(f"{len(entries)} tasks and mixtures", file=sys.stderr)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m prompt_tuning.tasks list [--family F] | labels NAME`."""
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.tasks",
      description="List the SeqIO tasks and mixtures this project registers.")
  parser.add_argument("--task_module", action="append", default=[],
                      help="also import this module (your own tasks); "
                           "repeatable")
  commands = parser.add_subparsers(dest="command", required=True)
  listing = commands.add_parser("list", help="print every task and mixture")
  listing.add_argument("--family", default=None,
                       help="only this family, e.g. taskless_super_glue")
  labels = commands.add_parser("labels", help="print a task's label words")
  labels.add_argument("name")
  args = parser.parse_args(argv)
  import_builtin()
  try:
    import_modules(args.task_module)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.command == "list":
    return _print_list(args.family)
  try:
    print("\n".join(class_labels(args.name)))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
