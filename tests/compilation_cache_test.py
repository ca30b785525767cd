"""Where the persistent compilation cache goes: the flag, then
$PROMPT_TUNING_COMPILATION_CACHE, then JAX's own variable, then the user's
cache directory; `off` turns it off. (That runs hit it: the sweep test in
tests/experiments/sweep_root_test.py.)"""

import os

import pytest

from prompt_tuning import compilation_cache as cc


def test_order_and_off():
  home = {"XDG_CACHE_HOME": "/home/u/.cache"}
  assert cc.resolve(None, home) == (
      "/home/u/.cache/prompt_tuning/jax_compilation_cache")
  jax_env = dict(home, JAX_COMPILATION_CACHE_DIR="/jax")
  assert cc.resolve(None, jax_env) == "/jax"
  ours = dict(jax_env, PROMPT_TUNING_COMPILATION_CACHE="/ours")
  assert cc.resolve(None, ours) == "/ours"
  assert cc.resolve("/flag", ours) == "/flag"
  for off in ("off", "OFF", "none", "0", "false"):
    assert cc.resolve(off, ours) is None
    assert cc.resolve(None, dict(ours, PROMPT_TUNING_COMPILATION_CACHE=off)
                      ) is None
  # An empty value is "not set"; a relative one is made absolute.
  assert cc.resolve("", ours) == "/ours"
  assert cc.resolve("rel", ours) == os.path.abspath("rel")


def test_default_without_xdg(monkeypatch):
  monkeypatch.setenv("HOME", "/home/v")
  assert cc.default_directory({}) == (
      "/home/v/.cache/prompt_tuning/jax_compilation_cache")


def test_a_url_is_refused_not_made_a_local_directory(tmp_path, monkeypatch):
  # abspath("gs://b/c") is "<cwd>/gs:/b/c": enable would have created that
  # local directory instead of refusing the URL.
  monkeypatch.chdir(tmp_path)
  for flag, environ in (("gs://b/c", {}), (None, {cc.ENV: " gs://b/c "})):
    assert cc.resolve(flag, environ) == "gs://b/c"
  with pytest.raises(ValueError, match=r"^compilation cache gs://b/c: must "
                     r"be a local or mounted directory"):
    cc.enable("gs://b/c")
  assert not os.listdir(tmp_path)
