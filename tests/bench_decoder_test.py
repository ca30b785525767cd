"""`python -m prompt_tuning.bench.decoder`: our decoder-only prompt step
timed, its per-device memory on a mesh without weights, and the PEFT
CAUSAL_LM peer (with the torch extra)."""

import jax
import pytest

from prompt_tuning.bench import decoder

SHAPES = ["--layers", "2", "--width", "64", "--heads", "4", "--kv_heads",
          "2", "--head_dim", "16", "--mlp", "128", "--vocab", "512",
          "--batch", "8", "--inputs", "16", "--targets", "4", "--prompt",
          "5", "--steps", "2", "--warmup", "1"]


def test_our_step_trains_the_prompt_only():
  (line,) = decoder.main(SHAPES)
  assert line["params_trainable"] == 5 * 64
  assert line["step_s"] > 0 and line["loss_last"] < line["loss_first"]


def test_compile_only_memory_shrinks_with_the_mesh():
  """No weights are created; the frozen weights' bytes per device shrink
  with model parallelism, then with FSDP over data as well."""
  assert jax.device_count() >= 8
  one = decoder.main(SHAPES + ["--compile_only"])[-1]
  model = decoder.main(SHAPES + ["--compile_only", "--mesh", "1,4"])[-1]
  fsdp = decoder.main(SHAPES + ["--compile_only", "--mesh", "2,4",
                                "--fsdp"])[-1]
  assert "step_s" not in one
  args = [x["xla_memory_per_device"]["argument_bytes"]
          for x in (one, model, fsdp)]
  assert args[0] > args[1] > args[2]
  assert one["params_frozen"] == model["params_frozen"]


def test_peft_peer_runs_the_same_rows():
  pytest.importorskip("torch")
  pytest.importorskip("peft")
  peer, ours, ratio = decoder.main(SHAPES + ["--peer", "peft"])
  assert peer["impl"] == "peft" and "error" not in peer, peer
  assert peer["params_trainable"] == ours["params_trainable"] == 5 * 64
  assert ratio["peft_step_s_over_ours"] > 0


def test_runs_without_tensorflow_seqio_or_gin():
  """Like the T5 benchmark: the step is timed without the data stack in
  the process (its import alone costs seconds and hundreds of MB)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import sys\n"
          "from prompt_tuning.bench import decoder\n"
          f"decoder.main({SHAPES!r})\n"
          "bad = [m for m in ('tensorflow', 'seqio', 'gin', 'torch') "
          "if m in sys.modules]\n"
          "assert not bad, bad\n")
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env,
                 capture_output=True)
