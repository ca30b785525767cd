"""A method as plain JSON: what a run directory's `method.json` holds.

`to_json` gives {"method": name, "options": the config's fields, "version"};
`from_json` rebuilds the same frozen dataclass (lists back to tuples, each
config's own checks rerun), so evaluation, inference and PEFT export rebuild
exactly the model a run trained. Fields the builder sets from the frozen
model (`PrefixConfig.config`, `PromptTuning.wayward_target`, and any
field declared `compare=False`) are not options: they are left out and set
again by `setup.attach_method`. Anything that does not describe a method is
refused in one line naming `where`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from prompt_tuning import methods
from prompt_tuning.methods.base import Method

VERSION = 1
# Set by the builder from the frozen model, never by the user: not options.
BUILDER_FIELDS = ("config", "wayward_target")


def _plain(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  raise TypeError(f"{type(value).__name__} is not a plain JSON value")


def _options(cls: type) -> Dict[str, dataclasses.Field]:
  # Builder-set fields are declared compare=False (they do not make two
  # methods different): never options.
  return {f.name: f for f in dataclasses.fields(cls)
          if f.name not in BUILDER_FIELDS and f.compare}


def to_json(method: Method) -> Dict[str, Any]:
  """{"method": name, "options": {field: value}, "version": 1}."""
  options = {}
  for name in _options(type(method)):
    try:
      options[name] = _plain(getattr(method, name))
    except TypeError as e:
      raise ValueError(f"{type(method).__name__}.{name}: {e}.") from None
  return {"method": method.name, "options": options, "version": VERSION}


def from_json(record: Mapping[str, Any], where: str = "method.json") -> Method:
  """The method `record` (from `to_json`) describes.

  Args:
    record: the parsed JSON object.
    where: names the file in error messages.

  Raises:
    ValueError: one line: not a method record, a newer version, an unknown
      method or field, or options the method's own checks refuse.
  """
  if not isinstance(record, Mapping) or not isinstance(
      record.get("options", {}), Mapping):
    raise ValueError(f"{where}: not a method record ({{'method': NAME, "
                     f"'options': {{...}}, 'version': {VERSION}}}).")
  version = record.get("version", VERSION)
  if version != VERSION:
    raise ValueError(f"{where}: version {version!r}; this code reads version "
                     f"{VERSION} (written by a newer prompt_tuning?).")
  cls = methods.method_class(record.get("method"), f"{where}: method")
  fields = _options(cls)
  options = dict(record.get("options", {}))
  unknown = sorted(set(options) - set(fields))
  if unknown:
    raise ValueError(f"{where}: {cls.__name__} has no option {unknown[0]!r} "
                     f"(its options: {', '.join(fields) or 'none'}).")
  options = {k: tuple(v) if isinstance(v, list) else v
             for k, v in options.items()}
  try:
    return cls(**options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {' '.join(str(e).split())}") from None
