"""The types of values gin binds, checked at parse.

gin hands a frozen config dataclass whatever a binding says:
`AdafactorConfig.learning_rate = 'fast'` builds an optimizer that fails
inside the jitted train step, after the first evaluation has written files.
`check` compares every value bound to a field of a config dataclass, or to
an annotated parameter of a configurable function (`train.dropout_rate`),
with its annotation as soon as the config is parsed (the CLI's and the sweep
command's one code path, `configurables.parse`) and refuses a mismatch in one
line that names the binding, the macro it came through, and the gin file and
line (or the command-line binding) that set it.

Annotations checked: bool, int, float (an int is a float too; a bool is
neither), str, Optional/`X | None`, tuples (`Tuple[str, ...]`, lists
accepted: gin writes lists). Anything else is left to the dataclass itself.
A value gin computes (`@configurable()`, also through a macro) is computed
here once, as gin would, and what it returns is checked; one whose call
fails, and an uncalled `@configurable`, are left to the real call. Scoped
bindings (`scope/Config.field`) are not checked.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import types
import typing
from typing import Any, Dict, Mapping, Optional, Sequence

import gin
from gin import config_parser

# Where each binding was made: 'Configurable.field' or a macro name ->
# 'in FILE:LINE' / 'by --gin.NAME=VALUE'.
Locations = Dict[str, str]
_UNBOUND = object()
# gin's parser needs a delegate for `@name` and `%NAME` values; created on
# first use, once the configurables are registered.
_DELEGATE = None


def _accepts(hint: Any, value: Any) -> bool:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is type(None):
    return value is None
  if origin in (typing.Union, types.UnionType):
    return any(_accepts(a, value) for a in args)
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_accepts(args[0], v) for v in value)
    return not args or (len(args) == len(value) and
                        all(_accepts(a, v) for a, v in zip(args, value)))
  return True  # not a kind this module checks


def _describe(hint: Any) -> str:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_describe(a) for a in args)
  if origin is tuple:
    inner = (_describe(args[0]) if len(args) == 2 and args[1] is Ellipsis
             else ", ".join(_describe(a) for a in args))
    return f"a list of ({inner})"
  return {type(None): "None", bool: "True or False",
          int: "a whole number (int)", float: "a number (float)",
          str: "a 'quoted string'"}.get(hint, getattr(hint, "__name__",
                                                      str(hint)))


def _macro_name(value: Any) -> Optional[str]:
  """The macro a bound value refers to (`%LR` -> 'LR'), else None."""
  if isinstance(value, gin.config.ConfigurableReference) and (
      value.selector == "gin.macro"):
    return value.scoped_selector.rsplit("/", 1)[0]
  return None


def _find(path: str, search_paths: Sequence[str]) -> Optional[str]:
  """gin's own lookup: as given, then under each search path."""
  prefixes = [""] if os.path.isabs(path) else [""] + list(search_paths)
  for prefix in prefixes:
    candidate = os.path.join(prefix, path)
    if os.path.isfile(candidate):
      return candidate
  return None


def _scan(statements, search_paths: Sequence[str], found: Locations,
          depth: int = 0) -> None:
  for statement in statements:
    if isinstance(statement, config_parser.IncludeStatement) and depth < 8:
      path = _find(statement.filename, search_paths)
      if path is not None:
        with open(path, encoding="utf-8") as f:
          _scan(config_parser.ConfigParser(f, _DELEGATE), search_paths,
                found, depth + 1)
    elif isinstance(statement, config_parser.BindingStatement):
      key = (f"{statement.selector}.{statement.arg_name}"
             if statement.arg_name else statement.selector)
      where = statement.location
      found[key] = (f"in {where.filename}:{where.line_num}" if
                    where.filename else "")


def locations(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str]) -> Locations:
  """Where the last binding of each parameter and macro was made.

  Re-reads the (already parsed) files with gin's own parser; a file or
  statement it cannot read is skipped: locations only improve a message.
  """
  global _DELEGATE
  if _DELEGATE is None:
    _DELEGATE = gin.config.ParserDelegate(skip_unknown=True)
  found: Locations = {}
  for path in gin_files:
    try:
      _scan([config_parser.IncludeStatement(path, None)], search_paths,
            found)
    except Exception:  # pylint: disable=broad-except
      continue
  for binding in bindings:
    key = binding.split("=", 1)[0].strip()
    value = binding.split("=", 1)[1].strip() if "=" in binding else ""
    found[key.split("/")[-1] if "." not in key else key] = (
        f"by --gin.{key}={value}")
  return found


def _bound(name: str) -> Dict[str, Any]:
  try:
    return gin.get_bindings(name, resolve_references=False)
  except (ValueError, KeyError):
    return {}


def _parameter_names(target: Any) -> Sequence[str]:
  """A dataclass's fields, or a function's parameters."""
  if dataclasses.is_dataclass(target):
    return [f.name for f in dataclasses.fields(target)]
  return list(inspect.signature(target).parameters)


def check(configs: Mapping[str, Any], gin_files: Sequence[str],
          bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Refuses a value of the wrong type bound to a config field or parameter.

  Args:
    configs: gin name -> a dataclass or function, e.g.
      {'AdafactorConfig': ..., 'train': ...}.
    gin_files, bindings, search_paths: what was parsed (for the locations).

  Raises:
    TypeError: one line, e.g. "AdafactorConfig.learning_rate = 'fast': must
      be a number (float); set in runs/x.gin:12." (configurables turns it
      into a ConfigError).
  """
  where: Optional[Locations] = None
  for name, cls in configs.items():
    try:
      hints = typing.get_type_hints(cls)
    except Exception:  # pylint: disable=broad-except
      continue  # an annotation that does not resolve here: not checked
    bound = _bound(name)
    for field_name in _parameter_names(cls):
      raw = bound.get(field_name, _UNBOUND)
      if raw is _UNBOUND or field_name not in hints:
        continue
      macro = _macro_name(raw)
      try:
        value = copy.deepcopy(raw)  # evaluates %MACRO (and @refs())
      except Exception:  # pylint: disable=broad-except
        continue  # a reference that fails says so itself when called
      if isinstance(value, gin.config.ConfigurableReference) or (
          value is gin.config.REQUIRED):
        continue  # computed when called; or missing, said by the caller
      if _accepts(hints[field_name], value):
        continue
      if where is None:
        where = locations(gin_files, bindings, search_paths)
      key = f"{name}.{field_name}"
      label, origin = (f"{macro} ({key})", where.get(macro, "")) if macro \
          else (key, where.get(key, ""))
      via = (f" (through %{macro}, bound {where[key]})"
             if macro and where.get(key) else "")
      raise TypeError(
          f"{label} = {value!r}: must be {_describe(hints[field_name])}"
          + (f"; set {origin}" if origin else "") + via + ".")


def typed_configurables(configurables: Mapping[str, Any]) -> Dict[str, Any]:
  """The dataclasses and functions among registered configurables."""
  return {n: c for n, c in configurables.items()
          if (isinstance(c, type) and dataclasses.is_dataclass(c)) or
          inspect.isfunction(c)}


