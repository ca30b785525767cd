"""Preparing the TFDS data behind SeqIO tasks: `python -m prompt_tuning.data`.

A task reads TFDS data through its `seqio.TfdsDataSource`; before the first
run, someone has to download and prepare it. This module finds the datasets a
task or mixture reads (name:version, the splits it uses, the data directory
it reads) and runs each TFDS builder's `download_and_prepare` into that
directory, one line of progress per dataset and one line per failure (which
dataset, why, what to do). `unprepared` says what is missing without
preparing anything, for checks that run before a long job.

Why not `tfds build`: in TFDS 4.9.10 the `tfds` command imports apache_beam
for its `convert_format` subcommand, so it fails without apache-beam even for
builders that never use beam. The builders behind the paper's tasks
(super_glue, definite_pronoun_resolution, squad, mrqa, glue) are plain
`GeneratorBasedBuilder`s: calling them directly needs no beam. They do need
`importlib_resources`, which TFDS imports but declares only for Python < 3.9.

Importing this module imports seqio and TFDS; it neither downloads nor
touches the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import socket
import sys
import urllib.parse
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import seqio
import tensorflow_datasets as tfds

from prompt_tuning.data import registry

# Seconds to wait for a TCP connection to a download host before calling it
# unreachable: an offline machine answers at once, a slow link within this.
_CONNECT_TIMEOUT_S = 10.0
# Environment variables through which requests reaches the internet; with one
# set, a direct connection saying nothing about reachability, hosts are not
# checked.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY",
                    "HTTPS_PROXY", "ALL_PROXY")


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  """One TFDS dataset that registered tasks read."""

  # TFDS name with config and version, as the source gives it, e.g.
  # 'super_glue/rte:1.0.2'.
  name: str
  # The data directory the tasks read it from when not overridden: the
  # source's own (or seqio's override); None means TFDS's default
  # ($TFDS_DATA_DIR, else ~/tensorflow_datasets).
  data_dir: Optional[str]
  # The TFDS splits the tasks read (slices reduced to their split), sorted;
  # empty when a task reads every split.
  splits: Tuple[str, ...]
  # The tasks that read it, sorted.
  tasks: Tuple[str, ...]


class PrepareError(Exception):
  """A dataset cannot be prepared; the message is one line naming it."""


def _tasks_of(name: str) -> List[seqio.Task]:
  provider = registry.get(name)
  if isinstance(provider, seqio.Mixture):
    return list(provider.tasks)
  return [provider]


def _split_names(tfds_split: Optional[str]) -> List[str]:
  """'train[:90%]+validation' -> ['train', 'validation']."""
  if not tfds_split:
    return []
  return [re.sub(r"\[.*\]$", "", part.strip())
          for part in tfds_split.split("+")]


def _reads(task: seqio.Task) -> List[Tuple[str, Optional[str], List[str]]]:
  """(tfds name, data dir, TFDS splits) of each dataset a task reads."""
  source = task.source
  if not isinstance(source, seqio.TfdsDataSource):
    return []
  loader = source.tfds_dataset
  custom = loader.tfds_splits
  if custom:
    # A source that reads each split from its own dataset (seqio.TfdsSplit).
    return [(s.dataset, s.data_dir, _split_names(s.split))
            for s in custom.values()]
  # Canonical split -> TFDS split (or slice). seqio keeps this mapping only
  # in its loader (the source's `splits` are the canonical names), hence the
  # private attribute; None when the source reads every split.
  split_map = getattr(loader, "_split_map", None) or {}
  splits = [name for tfds_split in split_map.values()
            for name in _split_names(tfds_split)]
  return [(loader.name, loader.data_dir, splits)]


def tfds_datasets(task_names: Sequence[str]) -> List[TfdsDataset]:
  """The TFDS datasets the named tasks and mixtures read, sorted by name.

  Args:
    task_names: registered SeqIO task or mixture names.

  Returns:
    One entry per (dataset, data dir), with the splits and tasks that need
    it; tasks whose source is not TFDS contribute nothing.

  Raises:
    ValueError: (one line, from `registry.get`) for a name nobody
      registered.
  """
  splits: Dict[Tuple[str, Optional[str]], set] = {}
  readers: Dict[Tuple[str, Optional[str]], set] = {}
  for name in task_names:
    for task in _tasks_of(name):
      for tfds_name, data_dir, task_splits in _reads(task):
        key = (tfds_name, data_dir)
        readers.setdefault(key, set()).add(task.name)
        # An empty split list means "every split": it absorbs the others.
        if key in splits and (not splits[key] or not task_splits):
          splits[key] = set()
        else:
          splits[key] = splits.get(key, set()) | set(task_splits)
  return [TfdsDataset(name, data_dir, tuple(sorted(splits[(name, data_dir)])),
                      tuple(sorted(readers[(name, data_dir)])))
          for name, data_dir in sorted(readers, key=lambda k: (k[0],
                                                                k[1] or ""))]


def default_data_dir() -> str:
  """TFDS's default data directory: $TFDS_DATA_DIR as it was when TFDS was
  imported, else ~/tensorflow_datasets (local, or a gs:// URL)."""
  return os.fspath(tfds.core.constants.DATA_DIR)


def builder(dataset: TfdsDataset, data_dir: Optional[str] = None
            ) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `dataset` in `data_dir` (default: where tasks read).

  Raises:
    PrepareError: TFDS knows no such dataset, config or version, or cannot
      read what is prepared (a damaged dataset_info.json, no permission).
  """
  try:
    return tfds.builder(dataset.name, data_dir=data_dir or dataset.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise PrepareError(
        f"{dataset.name}: TFDS {tfds.__version__} has no builder for it "
        f"({_first_line(e)}); is the module that defines it imported "
        "(--task_module)?") from None
  except Exception as e:  # pylint: disable=broad-except
    # An unknown config or version (TFDS raises ValueError, AssertionError)
    # or prepared files it cannot read: the first line says which.
    raise PrepareError(
        f"{dataset.name}: TFDS {tfds.__version__} cannot open it "
        f"({_first_line(e)})") from None


def _root(built: tfds.core.DatasetBuilder) -> str:
  """The TFDS data directory (above name/config/version) of a builder."""
  # A builder of prepared data is read from its files, and its
  # `data_dir_root` is then the version folder itself.
  variant = os.fspath(built.data_dir).rstrip("/")
  suffix = "/" + built.info.full_name
  if variant.endswith(suffix):
    return variant[:-len(suffix)]
  return os.fspath(built.data_dir_root)


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0]


def _missing_splits(dataset: TfdsDataset,
                    built: tfds.core.DatasetBuilder) -> List[str]:
  prepared = set(built.info.splits.keys())
  return [s for s in dataset.splits if s not in prepared]


def state(dataset: TfdsDataset, built: tfds.core.DatasetBuilder) -> str:
  """'prepared', or one line saying what is missing, for a built builder."""
  if not built.is_prepared():
    return "not prepared"
  missing = _missing_splits(dataset, built)
  if missing:
    return (f"prepared without split(s) {', '.join(missing)} that "
            f"{', '.join(dataset.tasks)} read")
  return "prepared"


def unprepared(task_names: Sequence[str],
               data_dir: Optional[str] = None) -> List[str]:
  """One line per TFDS dataset the tasks need that is not prepared.

  Looks at files only: no download, no network.

  Args:
    task_names: registered SeqIO task or mixture names.
    data_dir: TFDS data directory to look in; default: where the tasks read
      ($TFDS_DATA_DIR, else ~/tensorflow_datasets, unless a source names its
      own).

  Returns:
    Messages like "super_glue/rte:1.0.2 (read by super_glue_rte_v102) is not
    prepared in /data/tfds: python -m prompt_tuning.data prepare
    super_glue_rte_v102 --data_dir /data/tfds"; empty when all is there.

  Raises:
    ValueError: (one line) for a name nobody registered.
  """
  messages = []
  for dataset in tfds_datasets(task_names):
    try:
      built = builder(dataset, data_dir)
    except PrepareError as e:
      messages.append(str(e))
      continue
    now = state(dataset, built)
    if now != "prepared":
      root = _root(built)
      messages.append(
          f"{dataset.name} (read by {', '.join(dataset.tasks)}) is {now} in "
          f"{root}: python -m prompt_tuning.data prepare "
          f"{' '.join(dataset.tasks)} --data_dir {root}")
  return messages


def _version_problem(built: tfds.core.DatasetBuilder) -> Optional[str]:
  """Why this TFDS cannot generate the builder's version, or None."""
  installable = {str(built.canonical_version), str(max(built.versions))}
  if str(built.version) in installable:
    return None
  family = built.info.full_name.rsplit("/", 1)[0]
  return (f"TFDS {tfds.__version__} generates only "
          f"{' or '.join(sorted(installable))} of {family}; copy a prepared "
          f"{built.info.full_name} (made by the older TFDS that could) "
          f"into {_root(built)}")


def _proxied() -> bool:
  return any(os.environ.get(v) for v in _PROXY_VARIABLES)


def _config_urls(built: tfds.core.DatasetBuilder) -> List[str]:
  """URLs in the builder config's `*_url(s)` attributes (str, dict, list).

  Where TFDS's builders keep what one config downloads (super_glue's
  `data_url`, mrqa's `data_urls`); a plain `url` is a homepage.
  """
  urls = []
  config = built.builder_config
  for name, value in (vars(config) if config is not None else {}).items():
    if name == "url" or not name.endswith(("url", "urls")):
      continue
    values = (value.values() if isinstance(value, dict) else
              value if isinstance(value, (list, tuple)) else [value])
    urls.extend(v for v in values
                if isinstance(v, str) and re.match(r"https?://", v))
  return urls


def _unreachable(built: tfds.core.DatasetBuilder,
                 seen: Dict[str, Optional[str]]) -> Optional[str]:
  """Why the builder's download hosts do not answer, or None.

  A download from an unreachable host takes TFDS ~200 s of retries to give
  up; a TCP connection says the same in milliseconds. The URLs come from the
  builder config (all of them needed: one unreachable host fails), else from
  the builder's checksums file (every config's: fails only if none
  answers). Without either, or behind a proxy, nothing is checked.

  Args:
    built: the builder.
    seen: host:port -> the reason it failed, None if it answered; a cache
      across datasets of one command.
  """
  urls = _config_urls(built)
  all_needed = bool(urls)
  urls = urls or list(built.url_infos or ())
  if not urls or _proxied():
    return None
  reasons = []
  for url in urls:
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    address = f"{parsed.hostname}:{port}"
    if address not in seen:
      try:
        socket.create_connection((parsed.hostname, port),
                                 timeout=_CONNECT_TIMEOUT_S).close()
        seen[address] = None
      except OSError as e:
        seen[address] = getattr(e, "strerror", None) or _first_line(e)
    if seen[address] is not None:
      reasons.append(f"{address}: {seen[address]}")
    elif not all_needed:
      return None
  if not reasons:
    return None
  return ("cannot reach its download host(s) "
          f"({'; '.join(sorted(set(reasons)))})")


def prepare(dataset: TfdsDataset, data_dir: Optional[str] = None,
            say: Callable[[str], None] = print,
            hosts: Optional[Dict[str, Optional[str]]] = None) -> bool:
  """Downloads and prepares one dataset unless it is already there.

  Args:
    dataset: what to prepare.
    data_dir: TFDS data directory; default: where the tasks read it.
    say: where progress lines go.
    hosts: host reachability cache shared across calls (see `_unreachable`).

  Returns:
    True if it was prepared now, False if it already was.

  Raises:
    PrepareError: one line naming the dataset, the data directory, why, and
      what to do.
  """
  built = builder(dataset, data_dir)
  root = _root(built)
  now = state(dataset, built)
  if now == "prepared":
    say(f"{dataset.name}: already prepared in {built.data_dir}, skipped")
    return False
  if built.is_prepared():
    # Prepared, but not with the splits the tasks read: TFDS will not
    # overwrite a version, so only the user can decide to delete it.
    raise PrepareError(f"{dataset.name} in {root}: {now}; delete "
                       f"{built.data_dir} and prepare it again")
  problem = _version_problem(built)
  if problem is None:
    problem = _unreachable(built, {} if hosts is None else hosts)
    if problem is not None:
      problem += ("; on a machine without internet access, prepare it "
                  "elsewhere and copy the dataset's folder into the data dir")
  if problem is not None:
    raise PrepareError(f"{dataset.name} in {root}: {problem}")
  say(f"{dataset.name}: preparing in {root} (for {', '.join(dataset.tasks)})")
  try:
    built.download_and_prepare()
  except ModuleNotFoundError as e:
    # Not every such module is ours to install (apache_beam for a beam
    # builder): the message says which, and what the install covers.
    raise PrepareError(
        f"{dataset.name} in {root}: TFDS needs the module {e.name!r} to "
        "prepare it; install it (pip install -c .ci/constraints.txt -e . "
        "installs those the paper's datasets need)") from None
  except Exception as e:  # pylint: disable=broad-except
    raise PrepareError(
        f"{dataset.name} in {root}: {type(e).__name__}: {_first_line(e)} "
        "(partial files stay under its downloads/ folder and are reused; "
        "run the command again once the cause is fixed)") from None
  say(f"{dataset.name}: prepared in {built.data_dir}")
  return True


def _print_list(datasets: Sequence[TfdsDataset],
                data_dir: Optional[str]) -> int:
  """Prints each dataset's state; 0 if all are prepared, else 1."""
  missing = 0
  for dataset in datasets:
    try:
      built = builder(dataset, data_dir)
      now = state(dataset, built)
      if now != "prepared":
        now = _version_problem(built) or now
      where = os.fspath(built.data_dir)
    except PrepareError as e:
      now, where = str(e), "-"
    missing += now != "prepared"
    splits = ",".join(dataset.splits) or "all splits"
    print(f"{dataset.name}  [{splits}]  {where}  {now}  "
          f"(tasks: {', '.join(dataset.tasks)})")
  print(f"{len(datasets) - missing} of {len(datasets)} datasets prepared",
        file=sys.stderr)
  return 1 if missing else 0


def _run_prepare(datasets: Sequence[TfdsDataset],
                 data_dir: Optional[str]) -> int:
  """Prepares each dataset, going on after a failure; 1 if any failed."""
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  failed = 0
  hosts: Dict[str, Optional[str]] = {}
  for dataset in datasets:
    try:
      prepare(dataset, data_dir, hosts=hosts)
    except PrepareError as e:
      failed += 1
      print(f"error: {e}", file=sys.stderr)
  done = len(datasets) - failed
  print(f"{done} of {len(datasets)} datasets prepared"
        + (f", {failed} failed" if failed else ""), file=sys.stderr)
  if data_dir and not failed:
    print(f"tasks read them with TFDS_DATA_DIR={data_dir}", file=sys.stderr)
  return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m prompt_tuning.data {prepare,list} TASK... [--data_dir D]`."""
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.data",
      description="Download and prepare the TFDS datasets that SeqIO tasks "
                  "read (no apache-beam needed).")
  parser.add_argument("--task_module", action="append", default=[],
                      help="also import this module (your own tasks); "
                           "repeatable")
  commands = parser.add_subparsers(dest="command", required=True)
  for command, text in (("prepare", "download and prepare what the tasks "
                                    "read (skips what is prepared)"),
                        ("list", "print what the tasks read and whether it "
                                 "is prepared; exit 1 if anything is not")):
    sub = commands.add_parser(command, help=text)
    sub.add_argument("tasks", nargs="+", metavar="TASK",
                     help="SeqIO task or mixture names")
    sub.add_argument("--data_dir", default=None,
                     help="TFDS data directory (default: $TFDS_DATA_DIR, "
                          "else ~/tensorflow_datasets: where tasks read)")
    sub.add_argument("--task_module", action="append", default=[],
                     dest="sub_task_module", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  # TFDS warns, for every dataset not yet prepared, that its folder "has no
  # dataset_info.json": noise around the one line per dataset said here.
  logging.getLogger("absl").setLevel(logging.ERROR)
  registry.import_builtin()
  try:
    registry.import_modules(args.task_module + args.sub_task_module)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    datasets = tfds_datasets(args.tasks)
    for name in args.tasks:
      if not tfds_datasets([name]):
        print(f"{name}: reads no TFDS data, nothing to prepare",
              file=sys.stderr)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.command == "list":
    return _print_list(datasets, args.data_dir)
  return _run_prepare(datasets, args.data_dir)
