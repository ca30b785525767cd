"""The package layout is the architecture: imports only point down.

Every module of `prompt_tuning/` (and `tasks/`, installed as
`prompt_tuning.tasks`) belongs to a level; it may import its own folder and
anything on a lower level, never a folder beside it on its own level or one
above. gin is imported only by the entry points' `cli`, `configurables` and
`gin_types`.
Reads the source with `ast`, so it imports nothing.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom to top. A top-level module or a folder of `prompt_tuning` -> level.
LEVELS = {
    "partitioning": 0, "models": 0, "metrics": 0, "storage": 0,
    "data": 1, "prompts": 1, "pretrained": 1,
    "methods": 2,
    "training": 3, "tasks": 3,
    "bench": 4, "experiments": 4, "serving": 4,
    "configurables": 5, "cli": 5, "train": 5, "eval": 5, "infer": 5,
    "smoke": 5, "sweep": 5, "report": 5, "prompt_tools": 5,
    "gin_types": 5, "compilation_cache": 5,
}
ENTRY_LEVEL = 5
GIN_IMPORTERS = {"cli", "configurables", "gin_types"}
# Gone in the layout step; nothing may bring them back at the top level.
REMOVED = ("checkpointing.py", "evaluation.py", "data.py", "task_registry.py",
           "custom_tasks.py", "vocabularies.py", "postprocessors.py",
           "checkpoints", "preprocessors")


def _sources():
  """(unit, path) for every module: unit = its top-level name or folder."""
  for base, unit_of in ((os.path.join(ROOT, "prompt_tuning"), None),
                        (os.path.join(ROOT, "tasks"), "tasks")):
    for folder, _, files in os.walk(base):
      for name in files:
        if not name.endswith(".py"):
          continue
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, base).split(os.sep)
        if unit_of:
          unit = unit_of
        elif len(rel) == 1:
          unit = rel[0][:-3]
        else:
          unit = rel[0]
        yield unit, path


def _imported_units(path):
  """Top-level units of `prompt_tuning` a module imports (also in functions),
  and whether it imports gin."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      if node.module == "prompt_tuning":
        names += [f"prompt_tuning.{a.name}" for a in node.names]
      else:
        names.append(node.module)
  units = {n.split(".")[1] for n in names
           if n.startswith("prompt_tuning.") and n.count(".") >= 1}
  return units, any(n == "gin" or n.startswith("gin.") for n in names)


def test_every_module_has_a_level():
  units = {unit for unit, _ in _sources()} - {"__init__"}
  assert units <= set(LEVELS), sorted(units - set(LEVELS))


def test_imports_point_down():
  wrong = []
  for unit, path in _sources():
    if unit == "__init__":
      continue
    level = LEVELS[unit]
    imported, _ = _imported_units(path)
    for target in imported - {unit}:
      target_level = LEVELS[target]
      if target_level > level or (target_level == level and
                                  level != ENTRY_LEVEL):
        wrong.append(f"{os.path.relpath(path, ROOT)} ({unit}, level {level}) "
                     f"imports {target} (level {target_level})")
  assert not wrong, "\n".join(wrong)


def test_only_the_entry_points_import_gin():
  importers = {os.path.relpath(path, ROOT) for unit, path in _sources()
               if _imported_units(path)[1] and unit not in GIN_IMPORTERS}
  assert not importers, sorted(importers)


def test_no_old_top_level_modules():
  package = os.path.join(ROOT, "prompt_tuning")
  assert not [n for n in REMOVED if os.path.exists(os.path.join(package, n))]


def test_every_package_says_what_it_owns():
  for folder, _, files in os.walk(os.path.join(ROOT, "prompt_tuning")):
    if "__pycache__" in folder or not any(f.endswith(".py") for f in files):
      continue
    init = os.path.join(folder, "__init__.py")
    assert os.path.exists(init), f"{folder} has no __init__.py"
    with open(init, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and len(doc.split()) >= 10, f"{init}: no docstring"
