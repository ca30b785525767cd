"""`gin_types.check` in process, on a config dataclass of its own: what it
accepts, what it refuses and where it says the value was set. (Through the
real CLI: the wrong-type cases of tests/training/preflight_test.py.)"""

import dataclasses
from typing import Optional, Tuple

import gin
import pytest

from prompt_tuning import gin_types


@gin.configurable("GinTypesTestConfig")
@dataclasses.dataclass(frozen=True)
class _Config:
  rate: float = 0.0
  steps: int = 0
  name: Optional[str] = None
  shape: Tuple[int, int] = (1, 1)


@gin.configurable("gin_types_test_steps")
def _steps(value):
  return value


_CONFIGS = {"GinTypesTestConfig": _Config}


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


def _check(bindings, gin_files=(), search_paths=()):
  for path in gin_files:
    gin.parse_config_file(path)
  gin.parse_config(bindings)
  gin_types.check(_CONFIGS, list(gin_files), list(bindings),
                  list(search_paths))


def test_accepts_what_the_annotations_allow():
  _check(["GinTypesTestConfig.rate = 1",  # an int is a float too
          "GinTypesTestConfig.steps = 3",
          "GinTypesTestConfig.name = None",
          "GinTypesTestConfig.shape = [4, 2]"])  # gin writes lists


@pytest.mark.parametrize("binding, message", [
    ("GinTypesTestConfig.steps = True",
     "GinTypesTestConfig.steps = True: must be a whole number (int); set by "
     "--gin.GinTypesTestConfig.steps=True."),
    ("GinTypesTestConfig.name = 3",
     "GinTypesTestConfig.name = 3: must be a 'quoted string' or None; set by "
     "--gin.GinTypesTestConfig.name=3."),
    ("GinTypesTestConfig.shape = (4, 'a')",
     "GinTypesTestConfig.shape = (4, 'a'): must be a list of (a whole number "
     "(int), a whole number (int)); set by "
     "--gin.GinTypesTestConfig.shape=(4, 'a')."),
])
def test_refuses_a_wrong_type_in_one_line(binding, message):
  with pytest.raises(TypeError) as error:
    _check([binding])
  assert str(error.value) == message


def test_names_the_file_and_line_of_a_macro(tmp_path):
  gin_file = tmp_path / "x.gin"
  gin_file.write_text("RATE = 'fast'\n\nGinTypesTestConfig.rate = %RATE\n")
  with pytest.raises(TypeError) as error:
    _check([], gin_files=[str(gin_file)])
  assert str(error.value) == (
      f"RATE (GinTypesTestConfig.rate) = 'fast': must be a number (float); "
      f"set in {gin_file}:1 (through %RATE, bound in {gin_file}:3).")


def test_a_computed_value_is_computed_and_checked():
  """As the module docstring says: `@f()` is called here, once, and what it
  returns is checked; scoped bindings are not checked."""
  _check(["gin_types_test_steps.value = 5",
          "GinTypesTestConfig.steps = @gin_types_test_steps()",
          "other/GinTypesTestConfig.steps = 'not checked'"])
  gin.clear_config()
  with pytest.raises(TypeError, match=r"^GinTypesTestConfig\.steps = 'five': "
                     r"must be a whole number \(int\)"):
    _check(["gin_types_test_steps.value = 'five'",
            "GinTypesTestConfig.steps = @gin_types_test_steps()"])
