"""`python -m prompt_tuning.prompt_tools <command>`: one frozen model, many prompts.

Commands (each calls one function of `prompt_tuning.serving`):

  infer       rows of a JSONL file, each naming its prompt or task, decoded
              or rank-classified in mixed batches -> JSONL
  ensemble    K prompts on a task in one pass: each prompt's metrics, mean,
              best and the majority vote's -> JSON
  nearest     top-k vocabulary neighbours of each prompt position (table,
              or --json)
  similarity  rank source prompts for a target prompt (SPoT measures)
  export-peft a prompt as a Hugging Face PEFT prompt-tuning adapter, or a
              LoRA, IA3, prefix or multitask ('mpt') run (--run) as that
              PEFT adapter (a multitask run's tasks are printed as PEFT's
              task ids)
  import-peft a PEFT prompt-tuning adapter as a .npy prompt (--checkpoint:
              checked against the frozen model first), or a LORA, IA3,
              PREFIX_TUNING or MULTITASK_PROMPT_TUNING adapter (--tasks names
              the latter's tasks) as a run directory for eval / infer
  throughput  time a batch mixing 8 prompts against one prompt, same shapes

Prompts are NAME=PATH (or NAME:TASK=PATH); PATH is a .npy file, a run
directory, an official numpy checkpoint or a PEFT adapter. Errors a user can
cause print one `error:` line. No gin: every option is a flag.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Optional, Sequence

# TensorFlow (seqio's) must not log its CUDA probe above an `error:` line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# RuntimeError: a run directory held by a training run (run_directory).
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError,
                PermissionError, KeyError, OSError, RuntimeError)


def _common(parser: argparse.ArgumentParser, prompts: bool = True,
            checkpoint: bool = True) -> None:
  if checkpoint:
    parser.add_argument("--checkpoint", required=True,
                        help="The frozen model: a T5X checkpoint, or a Hugging "
                        "Face T5 or decoder-only LM directory.")
    parser.add_argument("--model", default="",
                        help="Preset name (e.g. t5_1_1_base) for T5X "
                        "checkpoints, which carry no config.")
    parser.add_argument("--mesh_shape", default="-1,1",
                        help="data,model mesh sizes (default -1,1).")
    parser.add_argument("--fsdp", action="store_true",
                        help="Also shard the weights' embed axis over data.")
  if prompts:
    parser.add_argument("--prompt", action="append", default=[],
                        required=True, metavar="NAME[:TASK]=PATH",
                        help="A library prompt; repeat for several.")
  parser.add_argument("--task_module", action="append", default=[],
                      help="Module to import first (registers tasks), e.g. "
                      "prompt_tuning.tasks.quickstart.")


def _decode_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--inputs_length", type=int, default=512)
  parser.add_argument("--targets_length", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--method", default="greedy", choices=["greedy", "beam"])
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--rank_classification", action="store_true",
                      help="Score the label words instead of decoding.")
  parser.add_argument("--placement", default="prefix",
                      choices=["prefix", "suffix", "after_first"])
  parser.add_argument("--frozen_dtype", default=None,
                      help="e.g. bfloat16 for the frozen weights.")
  parser.add_argument("--dtype", default="bfloat16",
                      choices=["bfloat16", "float32"],
                      help="Compute dtype: bfloat16 (T5X's) or float32, to "
                      "match a float32 evaluation's scores.")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.prompt_tools",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--debug", action="store_true",
                      help="Show full tracebacks.")
  commands = parser.add_subparsers(dest="command", required=True)

  p = commands.add_parser("infer", help="Mixed-prompt inference over rows.")
  _common(p)
  _decode_flags(p)
  p.add_argument("--input", required=True, help="JSONL rows.")
  p.add_argument("--output", required=True, help="JSONL predictions.")
  p.add_argument("--vocabulary", default="",
                 help="byte, t5, mt5, a .model file or a task name "
                 "(default: the rows' first task).")

  p = commands.add_parser("ensemble", help="Evaluate K prompts and the vote.")
  _common(p)
  _decode_flags(p)
  p.add_argument("--task", required=True, help="Task or mixture.")
  p.add_argument("--split", default="validation")
  p.add_argument("--output_dir", default="", help="Writes ensemble.json.")

  p = commands.add_parser("nearest", help="Nearest tokens of a prompt.")
  _common(p, prompts=False)
  p.add_argument("--prompt", required=True, metavar="PATH")
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--task", default="", help="Marks its label words; also "
                 "gives the vocabulary.")
  p.add_argument("--labels", default="", help="Comma-separated label words "
                 "to mark instead.")
  p.add_argument("--vocabulary", default="")
  p.add_argument("--json", action="store_true", help="Print JSON records.")

  p = commands.add_parser("similarity", help="Rank source prompts (SPoT).")
  _common(p, prompts=False, checkpoint=False)
  p.add_argument("--target", required=True, metavar="PATH")
  p.add_argument("--source", action="append", default=[], required=True,
                 metavar="NAME=PATH")
  p.add_argument("--measure", default="average",
                 choices=["average", "max_token", "all_pairs"])
  p.add_argument("--json", action="store_true")

  p = commands.add_parser("export-peft",
                          help="Prompt or run -> PEFT adapter.")
  _common(p, prompts=False)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--prompt", metavar="PATH",
                      help="A prompt (any library format) or run directory.")
  source.add_argument("--run", metavar="RUN_DIR",
                      help="A run directory of any method PEFT can hold "
                      "(prompt, p_tuning, lora, ia3, prefix with layout "
                      "'peft' (either layout on a decoder-only LM), "
                      "multitask_prompt with mode 'mpt' (T5)): its best "
                      "checkpoint, else the newest.")
  p.add_argument("--output_dir", required=True)

  p = commands.add_parser("import-peft",
                          help="PEFT adapter -> .npy prompt or run directory.")
  _common(p, prompts=False, checkpoint=False)
  p.add_argument("--adapter", required=True)
  p.add_argument("--output", required=True,
                 help="The .npy file (PROMPT_TUNING), or the new run "
                 "directory (LORA, IA3, PREFIX_TUNING, "
                 "MULTITASK_PROMPT_TUNING).")
  p.add_argument("--checkpoint", default="",
                 help="The frozen model the adapter is for (a T5X or "
                 "Hugging Face T5, or a Hugging Face decoder-only LM): a "
                 "prompt's width is checked against it before "
                 "writing; the adapters that become run directories need "
                 "it.")
  p.add_argument("--model", default="",
                 help="With a T5X --checkpoint: its preset, to also check "
                 "heads and layers.")
  p.add_argument("--tasks", default="", metavar="NAME,NAME,...",
                 help="A MULTITASK_PROMPT_TUNING adapter's task names, in "
                 "PEFT's task-id order (0, 1, ...), one per task: the "
                 "mixture's tasks that evaluation gives those prompts.")

  p = commands.add_parser("throughput", help="Mixed vs single prompt speed.")
  p.add_argument("--preset", default="t5_1_1_small")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--prompt_length", type=int, default=20)
  p.add_argument("--targets", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  p.set_defaults(task_module=[])
  return parser


def _mesh(text: str):
  try:
    data, model = (int(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"--mesh_shape={text!r} is not DATA,MODEL (e.g. -1,1)."
                     ) from None
  return data, model


def _model_config(args):
  if not getattr(args, "model", ""):
    return None
  from prompt_tuning.models.config import t5_config  # pylint: disable=g-import-not-at-top
  return t5_config(args.model)


def _decode(args):
  from prompt_tuning.training.inference import DecodeConfig  # pylint: disable=g-import-not-at-top
  return DecodeConfig(method=args.method, beam_size=args.beam_size,
                      rank_classification=args.rank_classification)


def _run(args) -> int:
  for module in args.task_module:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"--task_module={module}: cannot import it ({e})."
                       ) from None
  from prompt_tuning.serving import analysis  # pylint: disable=g-import-not-at-top
  from prompt_tuning.serving import ensemble  # pylint: disable=g-import-not-at-top
  from prompt_tuning.serving import mixed  # pylint: disable=g-import-not-at-top
  if args.command == "infer":
    n = mixed.infer_mixed(
        input_path=args.input, prompts=args.prompt,
        initial_checkpoint_path=args.checkpoint, output_path=args.output,
        model_config=_model_config(args), vocabulary=args.vocabulary,
        task_feature_lengths={"inputs": args.inputs_length,
                              "targets": args.targets_length},
        batch_size=args.batch_size, decode=_decode(args),
        placement=args.placement, mesh_shape=_mesh(args.mesh_shape),
        fsdp=args.fsdp, frozen_dtype=args.frozen_dtype, dtype=args.dtype)
    print(f"wrote {n} predictions to {args.output}")
  elif args.command == "ensemble":
    report = ensemble.evaluate_ensemble(
        prompts=args.prompt, initial_checkpoint_path=args.checkpoint,
        mixture_or_task_name=args.task, model_config=_model_config(args),
        task_feature_lengths={"inputs": args.inputs_length,
                              "targets": args.targets_length},
        split=args.split, batch_size=args.batch_size, decode=_decode(args),
        placement=args.placement, mesh_shape=_mesh(args.mesh_shape),
        fsdp=args.fsdp, frozen_dtype=args.frozen_dtype, dtype=args.dtype,
        output_dir=args.output_dir)
    print(json.dumps(report, indent=2, sort_keys=True))
  elif args.command == "nearest":
    records = analysis.nearest_tokens(
        prompt_path=args.prompt, initial_checkpoint_path=args.checkpoint,
        model_config=_model_config(args), k=args.k,
        vocabulary=args.vocabulary, task=args.task,
        labels=[w for w in args.labels.split(",") if w],
        mesh_shape=_mesh(args.mesh_shape), fsdp=args.fsdp)
    from prompt_tuning.prompts import nearest  # pylint: disable=g-import-not-at-top
    print(json.dumps(records, indent=1) if args.json
          else nearest.format_table(records))
  elif args.command == "similarity":
    ranking = analysis.rank_sources(target_path=args.target,
                                    sources=args.source, measure=args.measure)
    if args.json:
      print(json.dumps([{"name": n, **m} for n, m in ranking], indent=1))
    else:
      print(f"{'source':<24} {'average':>9} {'max_token':>9} {'all_pairs':>9}")
      for name, m in ranking:
        print(f"{name:<24} {m['average']:>9.4f} {m['max_token']:>9.4f} "
              f"{m['all_pairs']:>9.4f}")
  elif args.command == "export-peft":
    if args.run is not None and not os.path.isdir(args.run):
      raise NotADirectoryError(f"--run {args.run}: not a run directory.")
    out, tasks = analysis.export_peft(prompt_path=args.prompt or args.run,
                                      initial_checkpoint_path=args.checkpoint,
                                      output_dir=args.output_dir,
                                      model_config=_model_config(args))
    # PEFT's adapter config has no field for task names: this line is
    # where a PEFT user learns which task_ids to pass.
    ids = ", ".join(f"{i}={name}" for i, name in enumerate(tasks))
    print(f"wrote PEFT adapter {out}" + (f" (task_ids: {ids})" if ids else ""))
  elif args.command == "throughput":
    from prompt_tuning.serving import throughput  # pylint: disable=g-import-not-at-top
    print(json.dumps(throughput.compare(
        args.preset, args.batch, args.inputs, args.prompt_length,
        args.targets, args.rounds, args.dtype), indent=1))
  elif args.command == "import-peft":
    from prompt_tuning.methods import peft_adapters  # pylint: disable=g-import-not-at-top
    from prompt_tuning.methods import peft_multitask  # pylint: disable=g-import-not-at-top
    kind = peft_adapters.peft_type(args.adapter)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if tasks and kind != peft_multitask.MPT:
      raise ValueError(f"--tasks names the tasks of a {peft_multitask.MPT} "
                       f"adapter; {args.adapter} is {kind}: drop --tasks.")
    if kind in peft_adapters.RUN_TYPES:
      name = analysis.import_peft_run(adapter_dir=args.adapter,
                                      output_dir=args.output,
                                      checkpoint=args.checkpoint,
                                      model_config=_model_config(args),
                                      tasks=tasks)
      print(f"wrote {name} run directory {args.output} (evaluate it with "
            f"--gin.PROMPT_PATH=\"'{args.output}'\")")
      return 0
    shape = analysis.import_peft(adapter_dir=args.adapter,
                                 output_path=args.output,
                                 checkpoint=args.checkpoint,
                                 model_config=_model_config(args))
    print(f"wrote prompt {list(shape)} to {args.output}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  # Announcements (casts, unchecked widths) are one `WARNING: ...` line each.
  logging.basicConfig(level=logging.WARNING,
                      format="%(levelname)s: %(message)s")
  try:
    return _run(args)
  except _USER_ERRORS as e:
    if args.debug:
      raise
    message = " ".join(str(e).split())
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
