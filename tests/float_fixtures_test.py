"""The fixture comparison: discrete exactly, floats within a tight tolerance."""

import math

from tests import float_fixtures
from tests.metrics import t5_cases

_NAN = t5_cases.to_plain(float("nan"))


def test_discrete_values_compare_exactly():
  assert float_fixtures.same({"a": [1, "x", None, True]},
                             {"a": [1, "x", None, True]})
  assert not float_fixtures.same(1, 1.0)
  assert not float_fixtures.same(True, 1)
  assert not float_fixtures.same("x", t5_cases.to_plain(b"x"))
  assert not float_fixtures.same([1, 2], [1, 2, 3])
  assert not float_fixtures.same({"a": 1}, {"b": 1})
  assert not float_fixtures.same("positive", "positivf")


def test_nan_infinity_and_zero_sign_compare_exactly():
  assert float_fixtures.same(_NAN, {"float": "nan"})
  assert float_fixtures.same(float("nan"), float("nan"))
  assert not float_fixtures.same(_NAN, 0.0, abs_=1.0)
  assert not float_fixtures.same(float("nan"), 0.0, abs_=1.0)
  assert not float_fixtures.same(float("inf"), 1e308, rel=1.0)
  assert not float_fixtures.same(float("inf"), float("-inf"), rel=1.0)
  assert not float_fixtures.same(0.0, -0.0, abs_=1.0)
  assert float_fixtures.same(-0.0, -0.0)


def test_floats_within_the_relative_tolerance():
  x = 27.890633016415407
  assert float_fixtures.same(x, 27.89063301641541)  # seen across CPUs
  assert float_fixtures.same(x, x * (1 + 0.9e-12))
  assert not float_fixtures.same(x, x * (1 + 1.1e-12))
  assert not float_fixtures.same(x, math.nextafter(x, 0.0), rel=0.0)
  assert float_fixtures.same(x, math.nextafter(x, 0.0))
  # An absolute floor, for values near zero.
  assert not float_fixtures.same(1e-15, 2e-15)
  assert float_fixtures.same(1e-15, -2e-15, abs_=1e-14)


def test_differences_name_the_place():
  lines = float_fixtures.differences(
      {"cases": {"a": {"rows": [{"x": 1.0, "y": "s"}]}}},
      {"cases": {"a": {"rows": [{"x": 1.5, "y": "t"}]}}})
  assert lines == ["/cases/a/rows[0]/x: 1.0 vs 1.5",
                   "/cases/a/rows[0]/y: 's' vs 't'"]
  assert float_fixtures.differences([1], [1.0]) == [
      "[0]: 1 (int) vs 1.0 (float)"]


def test_last_bit_differences_counts_floats_only():
  x = 7.590708079715382
  assert float_fixtures.last_bit_differences(
      {"a": [x, 1, float("nan")], "b": "s"},
      {"a": [7.590708079715378, 1, float("nan")], "b": "t"}) == 1
  assert float_fixtures.last_bit_differences([x, -0.0], [x, 0.0]) == 1
