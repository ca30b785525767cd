"""Runs a grid of benchmark configurations and prints one JSON line each.

Every configuration runs in a fresh worker process by default: a device's
peak-memory counter only ever grows within a process, JAX and PyTorch must
not share one GPU's memory, and the PyTorch peer may need another Python.
The parent never initialises a device itself. Order: the PyTorch peers first
(their process exits and frees the GPU before JAX starts), then the matmul
peak, then our configurations. Each line is printed as soon as its run ends
(the peers' once the peak is known, for their MFU), so a run cut short by a
timeout still leaves the earlier lines; the
comparison lines (ratios of ours to the peer of the same method, options and
shapes, and of each of our methods' steps to our model-tuning step) come
last; `table` formats them for people.

Result line fields (`kind: run`): the RunSpec fields that apply, backend,
device, versions, `compile_s`, `step_s` (median over `steps`),
`encoder_tokens_per_s` = B * (P + T) / step_s, `peak_bytes` with its
`memory_source`, `flops_per_step` (see `flops`), `matmul_peak_flops_per_s`
and `mfu` = flops_per_step / step_s / matmul peak, first and last loss,
XLA's own `xla_flops` and `xla_memory` (buffer sizes of the compiled step;
the only memory figure of a `compile_only` run); or `error` when the run
failed (e.g. out of memory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from prompt_tuning.bench import flops
from prompt_tuning.bench.spec import METHOD_FIELDS
from prompt_tuning.bench.spec import PEERS
from prompt_tuning.bench.spec import RESULT_MARKER
from prompt_tuning.bench.spec import RunSpec

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Fields that must match for two runs to count as the same shapes.
_SHAPE_FIELDS = ("preset", "batch", "inputs", "prompt", "targets")
# Method options that must match too (the prefix layout need not: PEFT has
# one, and the comparison says whether ours was the same).
_OPTION_FIELDS = ("lora_rank", "lora_alpha", "prefix_length",
                  "p_tuning_hidden")


def shapes_of(preset: str) -> Dict[str, int]:
  """The preset's `flops.Shapes` as a plain dict (for workers without JAX)."""
  # Imported here: the preset table pulls in jax.numpy, which a PyTorch-only
  # worker does not have (and which initialises no device).
  from prompt_tuning.models import t5_config  # pylint: disable=g-import-not-at-top
  return dataclasses.asdict(flops.Shapes.from_t5_config(t5_config(preset)))


def _worker_command(task: str, payload: Dict[str, Any],
                    peer_python: str) -> List[str]:
  if task == "peer":
    return [peer_python, "-m", "prompt_tuning.bench.peer",
            json.dumps(payload["spec"])]
  return [sys.executable, "-m", "prompt_tuning.bench", "--worker",
          json.dumps(dict(payload, task=task))]


def _run_isolated(task: str, payload: Dict[str, Any], peer_python: str,
                  timeout: float) -> Dict[str, Any]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
  try:
    proc = subprocess.run(_worker_command(task, payload, peer_python),
                          capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=_REPO_ROOT, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER):])
  tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-3:]
  return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-1500:]}


def run_worker(payload: Dict[str, Any]) -> Dict[str, Any]:
  """In a worker process: one task ('ours', 'peer' or 'peak')."""
  task = payload["task"]
  if task == "peak":
    # pylint: disable=g-import-not-at-top
    from prompt_tuning.bench import device
    return {dtype: device.matmul_peak(dtype, payload.get("size"))[
        "flops_per_s"] for dtype in _peak_dtypes(payload)}
  spec = RunSpec.from_dict(payload["spec"])
  if task == "ours":
    from prompt_tuning.bench import ours  # pylint: disable=g-import-not-at-top
    return ours.run(spec)
  from prompt_tuning.bench import peer  # pylint: disable=g-import-not-at-top
  return peer.run(spec)


def _peak_dtypes(payload: Dict[str, Any]) -> List[str]:
  """Our compute dtypes, plus the peers' (known only on the device)."""
  import jax  # pylint: disable=g-import-not-at-top
  dtypes = set(payload["ours_dtypes"])
  for precision in payload["peer_precisions"]:
    on_cpu = jax.default_backend() == "cpu"
    fp32 = precision == "fp32" or (precision == "auto" and on_cpu)
    dtypes.add("float32" if fp32 else "bfloat16")
  return sorted(dtypes)


def _in_process(task: str, payload: Dict[str, Any]) -> Dict[str, Any]:
  try:
    return run_worker(dict(payload, task=task))
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"[-1500:]}


def run(specs: Sequence[RunSpec], *, isolate: bool = True,
        peer_python: Optional[str] = None, run_timeout: float = 1800.0,
        matmul_size: Optional[int] = None,
        emit: Callable[[Dict[str, Any]], None] = None) -> List[Dict[str, Any]]:
  """Runs `specs` (peers first, then ours) and returns every line emitted.

  Args:
    specs: the configurations; their `shapes` are filled in here.
    isolate: one fresh process per run (the default; needed for honest
      peak-memory figures); False runs everything in this process.
    peer_python: the interpreter for peer workers (default: this one).
    run_timeout: seconds before an isolated run is killed and reported as an
      error.
    matmul_size: side of the timed peak product (None: the device default).
    emit: called with each line as soon as it is known (default: print it
      as JSON).

  Returns:
    The result lines, then the comparison lines.
  """
  emit = emit or (lambda line: print(json.dumps(line), flush=True))
  peer_python = peer_python or sys.executable
  specs = [dataclasses.replace(s, shapes=shapes_of(s.preset)) for s in specs]
  ours = [s for s in specs if s.impl == "ours"]
  peers = [s for s in specs if s.impl != "ours"]

  def execute(task, payload):
    if isolate:
      return _run_isolated(task, payload, peer_python, run_timeout)
    return _in_process(task, payload)

  lines: List[Dict[str, Any]] = []
  for spec in peers:
    lines.append(_finish(spec, _timed(execute, "peer",
                                      {"spec": _plain(spec)}), {}))
  needs_peak = bool(peers) or any(not s.compile_only for s in ours)
  peaks = {} if not needs_peak else execute("peak", {
      "size": matmul_size,
      "ours_dtypes": sorted({s.dtype for s in ours}),
      "peer_precisions": sorted({s.peer_precision for s in peers})})
  if "error" in peaks:
    emit({"kind": "error", "what": "matmul peak", "error": peaks["error"]})
    peaks = {}
  elif peaks:
    emit({"kind": "matmul_peak", "flops_per_s": peaks})
  for line in lines:  # the peers ran before the peak was known
    _add_mfu(line, peaks)
    emit(line)
  for spec in ours:
    lines.append(_finish(spec, _timed(execute, "ours",
                                      {"spec": _plain(spec)}), peaks))
    emit(lines[-1])
  comparisons = compare(lines)
  for line in comparisons:
    emit(line)
  return lines + comparisons


def _plain(spec: RunSpec) -> Dict[str, Any]:
  return json.loads(spec.to_json())


def _timed(execute, task, payload) -> Dict[str, Any]:
  start = time.perf_counter()
  result = execute(task, payload)
  result["wall_s"] = time.perf_counter() - start
  return result


def _finish(spec: RunSpec, result: Dict[str, Any],
            peaks: Dict[str, float]) -> Dict[str, Any]:
  line = {"kind": "run", **spec.describe(), **result}
  _add_mfu(line, peaks)
  return line


def _add_mfu(line: Dict[str, Any], peaks: Dict[str, float]) -> None:
  dtype = line.get("compute_dtype", line.get("dtype"))
  peak = peaks.get(dtype)
  if "step_s" not in line or not peak:
    return
  line["matmul_peak_flops_per_s"] = peak
  line["mfu"] = line["flops_per_step"] / line["step_s"] / peak


def compare(lines: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Ratio lines: each of our runs against the peer of its method, options
  and shapes, and each of our non-model runs against our fastest model run
  of its shapes.

  A peer line gives `tokens_per_s_ratio` (ours / peer, > 1: ours faster),
  `peak_memory_ratio`, both MFUs and both trainable counts; for prefix
  tuning, `like_for_like` says whether our layout was PEFT's."""
  ok = [l for l in lines if l.get("kind") == "run" and "step_s" in l]
  same = lambda a, b: all(a[f] == b[f] for f in _SHAPE_FIELDS)
  same_options = lambda a, b: all(a.get(f) == b.get(f)
                                  for f in _OPTION_FIELDS)
  out = []
  for line in ok:
    if line["impl"] != "ours":
      continue
    ours_desc = _ours_desc(line)
    for peer in ok:
      if not (peer["impl"] in PEERS and peer["mode"] == line["mode"] and
              same(line, peer) and same_options(line, peer)):
        continue
      entry = {
          "kind": "comparison",
          **{f: line[f] for f in _SHAPE_FIELDS},
          "method": line["mode"], "ours": ours_desc, "vs": peer["impl"],
          "tokens_per_s_ratio": (line["encoder_tokens_per_s"] /
                                 peer["encoder_tokens_per_s"]),
          "peak_memory_ratio": _ratio(line["peak_bytes"],
                                      peer["peak_bytes"]),
          "memory_sources": [line["memory_source"], peer["memory_source"]],
          "mfu": [line.get("mfu"), peer.get("mfu")],
          "params_trainable": [line.get("params_trainable"),
                               peer.get("params_trainable")],
      }
      if line["mode"] == "prefix":
        entry["like_for_like"] = (line.get("prefix_layout") ==
                                  peer.get("prefix_layout"))
      out.append(entry)
    if line["mode"] != "model":
      models = [m for m in ok if m["impl"] == "ours" and
                m["mode"] == "model" and same(line, m)]
      if models:
        best = min(models, key=lambda m: m["step_s"])
        out.append({
            "kind": "comparison", **{f: line[f] for f in _SHAPE_FIELDS},
            "method": line["mode"], "ours": ours_desc,
            "vs": "ours_model_tuning",
            "vs_config": {k: best.get(k) for k in (
                "remat", "scan", "attention", "dtype")},
            "step_time_ratio": line["step_s"] / best["step_s"],
        })
  return out


def _ours_desc(line: Dict[str, Any]) -> Dict[str, Any]:
  """What tells our runs of one shape apart (a comparison's `ours`)."""
  return {k: line.get(k) for k in (
      "mode", "remat", "scan", "attention", "frozen_dtype", "dtype",
      *METHOD_FIELDS.get(line["mode"], ()))}


def table(lines: Iterable[Dict[str, Any]]) -> str:
  """One Markdown row per run (step time, tokens/s, trainable params, MFU)
  with the ratios of each of our runs to its peer and to our model step."""
  lines = list(lines)
  rows = ["| preset | impl | method | options | setup | s/step | "
          "encoder tokens/s | trainable | MFU | tokens/s vs peer | "
          "step vs our model |", "|---" * 11 + "|"]
  comparisons = [l for l in lines if l.get("kind") == "comparison"]
  for line in lines:
    if line.get("kind") != "run":
      continue
    options = ", ".join(f"{k}={line[k]}" for k in
                        METHOD_FIELDS.get(line["mode"], ()) if k in line)
    if line["impl"] == "ours":
      setup = (f"{line['dtype']}, frozen {line.get('frozen_dtype') or '-'}, "
               f"{line['attention']}, remat {line['remat']}"
               f"{', scan' if line['scan'] else ''}")
    else:
      setup = f"{line.get('precision', line.get('peer_precision'))}"
    head = (f"| {line['preset']} | {line['impl']} | {line['mode']} | "
            f"{options} | {setup} |")
    if "step_s" not in line:
      rows.append(f"{head} error: {str(line.get('error'))[:80]} |"
                  + " |" * 5)
      continue
    vs_peer = vs_model = ""
    for c in comparisons:
      if line["impl"] != "ours" or c["ours"] != _ours_desc(line) or not all(
          c[f] == line[f] for f in _SHAPE_FIELDS):
        continue
      if c["vs"] == "ours_model_tuning":
        vs_model = f"{c['step_time_ratio']:.2f}x"
      else:
        vs_peer = f"{c['tokens_per_s_ratio']:.2f}x {c['vs']}"
        if c.get("like_for_like") is False:
          vs_peer += " (other layout)"
    mfu = f"{line['mfu']:.3g}" if line.get("mfu") else ""
    rows.append(
        f"{head} {line['step_s']:.4f} | {line['encoder_tokens_per_s']:.0f} | "
        f"{line.get('params_trainable', '')} | {mfu} | {vs_peer} | "
        f"{vs_model} |")
  return "\n".join(rows)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a and b else None
