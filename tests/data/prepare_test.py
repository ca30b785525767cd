"""`python -m prompt_tuning.data prepare|list` and `prepare.unprepared`.

No network: this module is also the task module the subprocesses import
(`--task_module tests.data.prepare_test`). It defines three tiny TFDS
builders and SeqIO tasks over them: one that generates its examples in code
(prepared for real, then read back through its SeqIO task), one whose
download host is unreachable (127.0.0.1:1, refused at once), one whose
preparation fails inside TFDS (a simulated connection error). The paper's
real tasks are checked for what they read (names, versions, splits) and for
the one-line messages of an empty data directory; their real builders
(SuperGLUE RTE, SQuAD) are prepared with apache_beam made unimportable, from
files written here in their download formats in place of the download.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from prompt_tuning.data import prepare
from prompt_tuning.data import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = "tests.data.prepare_test"
_EXAMPLES = {"train": 5, "validation": 3}


class PrepareTestTiny(tfds.core.GeneratorBasedBuilder):
  """Examples made in code: preparing it needs no download."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                             "label": np.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in _EXAMPLES.items()}

  def _generate_examples(self, split, n):
    for i in range(n):
      yield f"{split}-{i}", {"text": f"{split} example {i}", "label": i % 2}


class PrepareTestOffline(tfds.core.GeneratorBasedBuilder):
  """Downloads from a host nobody listens on (its checksums name it)."""

  VERSION = tfds.core.Version("1.0.0")
  # What a checksums.tsv beside a real builder gives TFDS.
  url_infos = {"http://127.0.0.1:1/prepare_test.zip":
               tfds.download.checksums.UrlInfo(size=1, checksum="0" * 64,
                                               filename="prepare_test.zip")}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    path = dl_manager.download(next(iter(self.url_infos)))
    return {"train": self._generate_examples(path)}

  def _generate_examples(self, path):
    yield 0, {"text": str(path)}


class PrepareTestBroken(PrepareTestOffline):
  """Fails inside TFDS, as a download does when the network drops."""

  url_infos = None

  def _split_generators(self, dl_manager):
    raise ConnectionError("simulated: network is unreachable\nsecond line")


for _name in ("prepare_test_tiny", "prepare_test_offline",
              "prepare_test_broken"):
  registry.add_task(_name, family="prepare_test",
                    source=seqio.TfdsDataSource(f"{_name}:1.0.0"),
                    preprocessors=[], output_features={})
registry.add_task("prepare_test_tiny_splits", family="prepare_test",
                  source=seqio.TfdsDataSource(
                      "prepare_test_tiny:1.0.0",
                      splits={"train": "train[:60%]",
                              "validation": "validation+train[60%:]"}),
                  preprocessors=[], output_features={})
registry.add_task("prepare_test_tiny_needs_test", family="prepare_test",
                  source=seqio.TfdsDataSource("prepare_test_tiny:1.0.0",
                                              splits=("train", "test")),
                  preprocessors=[], output_features={})
registry.add_mixture("prepare_test_failing",
                     ["prepare_test_offline", "prepare_test_broken"],
                     family="prepare_test", default_rate=1.0)


def _cli(*args, data_dir=None, env_data_dir=None):
  env = {k: v for k, v in os.environ.items()
         if k not in prepare._PROXY_VARIABLES and k != "TFDS_DATA_DIR"}
  if env_data_dir:
    env["TFDS_DATA_DIR"] = str(env_data_dir)
  flags = ["--data_dir", str(data_dir)] if data_dir else []
  return subprocess.run(
      [sys.executable, "-m", "prompt_tuning.data", "--task_module", MODULE,
       *args, *flags], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)


def _errors(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_paper_tasks_read_these_datasets():
  registry.import_builtin()
  got = {d.name: d for d in prepare.tfds_datasets(
      ["super_glue_v102_proportional", "mrqa_squad_to_bio_asq_v100"])}
  super_glue = {f"super_glue/{c}:1.0.2" for c in (
      "boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc.fixed")}
  assert super_glue <= set(got)
  assert {"definite_pronoun_resolution:1.1.0", "squad/v1.1:3.0.0",
          "mrqa/bio_asq:1.0.0"} <= set(got)
  assert got["squad/v1.1:3.0.0"].splits == ("train", "validation")
  # An out-of-domain set is evaluated on its TFDS `test` split.
  assert got["mrqa/bio_asq:1.0.0"].splits == ("test",)
  assert got["super_glue/wsc.fixed:1.0.2"].tasks == (
      "super_glue_wsc_v102_simple_eval", "super_glue_wsc_v102_simple_train")


def test_slices_reduce_to_their_splits():
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny_splits"])
  assert dataset.splits == ("train", "validation")
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny",
                                      "prepare_test_tiny_splits"])
  assert dataset.splits == ()  # one task reads every split
  assert dataset.tasks == ("prepare_test_tiny", "prepare_test_tiny_splits")


def test_unprepared_says_what_and_how_then_nothing(tmp_path):
  (message,) = prepare.unprepared(["prepare_test_tiny"], str(tmp_path))
  assert message == (
      f"prepare_test_tiny:1.0.0 (read by prepare_test_tiny) is not prepared "
      f"in {tmp_path}: python -m prompt_tuning.data prepare "
      f"prepare_test_tiny --data_dir {tmp_path}")
  lines = []
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny"])
  assert prepare.prepare(dataset, str(tmp_path), say=lines.append)
  assert prepare.unprepared(["prepare_test_tiny"], str(tmp_path)) == []
  assert not prepare.prepare(dataset, str(tmp_path), say=lines.append)
  assert lines[-1] == (f"prepare_test_tiny:1.0.0: already prepared in "
                       f"{tmp_path}/prepare_test_tiny/1.0.0, skipped")
  # Prepared, but without a split a task reads: said, never overwritten.
  (message,) = prepare.unprepared(["prepare_test_tiny_needs_test"],
                                  str(tmp_path))
  assert "without split(s) test that prepare_test_tiny_needs_test" in message
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny_needs_test"])
  with pytest.raises(prepare.PrepareError, match="delete .*prepare it again"):
    prepare.prepare(dataset, str(tmp_path))


def test_unreadable_prepared_data_is_not_called_a_missing_builder(tmp_path):
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny"])
  assert prepare.prepare(dataset, str(tmp_path), say=lambda _: None)
  info = tmp_path / "prepare_test_tiny" / "1.0.0" / "dataset_info.json"
  info.write_text("{damaged")
  (message,) = prepare.unprepared(["prepare_test_tiny"], str(tmp_path))
  assert message.startswith("prepare_test_tiny:1.0.0: TFDS ")
  assert "cannot open it (Failed to load JSON" in message, message
  assert "no builder" not in message and "--task_module" not in message
  # A name TFDS does not know: the module that would register it is asked for.
  unknown = prepare.TfdsDataset("prepare_test_nowhere:1.0.0", None, (), ("t",))
  with pytest.raises(prepare.PrepareError, match=(
      r"^prepare_test_nowhere:1\.0\.0: TFDS .* has no builder for it \(.*\); "
      r"is the module that defines it imported \(--task_module\)\?$")):
    prepare.builder(unknown, str(tmp_path))


def test_a_missing_module_is_named_not_promised(tmp_path, monkeypatch):
  def needs_beam(self, dl_manager):
    raise ModuleNotFoundError("No module named 'apache_beam'",
                              name="apache_beam")
  monkeypatch.setattr(PrepareTestTiny, "_split_generators", needs_beam)
  (dataset,) = prepare.tfds_datasets(["prepare_test_tiny"])
  with pytest.raises(prepare.PrepareError) as error:
    prepare.prepare(dataset, str(tmp_path), say=lambda _: None)
  assert str(error.value) == (
      f"prepare_test_tiny:1.0.0 in {tmp_path}: TFDS needs the module "
      "'apache_beam' to prepare it; install it (pip install -c "
      ".ci/constraints.txt -e . installs those the paper's datasets need)")


def test_paper_tasks_in_an_empty_dir_one_line_each(tmp_path):
  registry.import_builtin()
  names = ["super_glue_rte_v102", "squad_v010_allanswers",
           "mrqa_squad_to_bio_asq_v100"]
  messages = prepare.unprepared(names, str(tmp_path))
  assert len(messages) == 3
  assert all("\n" not in m and f"not prepared in {tmp_path}" in m
             for m in messages)
  assert not any(tmp_path.iterdir())  # looking wrote nothing


def test_a_version_this_tfds_cannot_build_is_refused_before_download(
    tmp_path):
  # T5's GLUE version: TFDS 4.9.10 generates only glue 2.0.0.
  registry.import_builtin()
  (dataset,) = prepare.tfds_datasets(["glue_cola_v002"])
  with pytest.raises(prepare.PrepareError) as error:
    prepare.prepare(dataset, str(tmp_path))
  assert str(error.value).startswith(f"glue/cola:1.0.0 in {tmp_path}: TFDS ")
  assert "generates only 2.0.0" in str(error.value)


def test_cli_prepares_skips_lists_and_the_task_reads_it(tmp_path):
  # No --data_dir: the default is where tasks read, $TFDS_DATA_DIR.
  first = _cli("prepare", "prepare_test_tiny", env_data_dir=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert f"prepare_test_tiny:1.0.0: preparing in {tmp_path}" in first.stdout
  assert (f"prepare_test_tiny:1.0.0: prepared in "
          f"{tmp_path}/prepare_test_tiny/1.0.0") in first.stdout
  again = _cli("prepare", "prepare_test_tiny", env_data_dir=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip() == (f"prepare_test_tiny:1.0.0: already prepared "
                                  f"in {tmp_path}/prepare_test_tiny/1.0.0, "
                                  "skipped")
  listed = _cli("list", "prepare_test_tiny", "prepare_test_broken",
                data_dir=tmp_path)
  assert listed.returncode == 1  # one of the two is not prepared
  assert (f"prepare_test_tiny:1.0.0  [all splits]  "
          f"{tmp_path}/prepare_test_tiny/1.0.0  prepared") in listed.stdout
  assert "prepare_test_broken:1.0.0  [all splits]" in listed.stdout
  assert "1 of 2 datasets prepared" in listed.stderr
  # The registered task reads what was prepared, from $TFDS_DATA_DIR.
  read = subprocess.run(
      [sys.executable, "-c",
       f"import {MODULE}, seqio\n"
       "for split in ('train', 'validation'):\n"
       "  ds = seqio.get_mixture_or_task('prepare_test_tiny').get_dataset(\n"
       "      None, split=split, shuffle=False)\n"
       "  print(split, sorted(int(x['label']) for x in ds.as_numpy_iterator()))"],
      cwd=ROOT, env={**os.environ, "TFDS_DATA_DIR": str(tmp_path)},
      capture_output=True, text=True, timeout=300)
  assert read.returncode == 0, read.stderr[-3000:]
  assert read.stdout.split("\n")[:2] == ["train [0, 0, 0, 1, 1]",
                                         "validation [0, 0, 1]"]


def test_cli_unknown_task_is_one_line_exit_2(tmp_path):
  result = _cli("prepare", "prepare_test_tinny", data_dir=tmp_path)
  assert result.returncode == 2
  (error,) = _errors(result.stderr)
  assert "No SeqIO task or mixture named 'prepare_test_tinny'" in error
  assert "close matches: prepare_test_tiny" in error
  assert "Traceback" not in result.stderr
  assert not any(tmp_path.iterdir())


def test_cli_failed_downloads_name_dataset_and_dir(tmp_path):
  result = _cli("prepare", "prepare_test_failing", data_dir=tmp_path)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  broken, offline = _errors(result.stderr)
  assert broken == (
      f"error: prepare_test_broken:1.0.0 in {tmp_path}: ConnectionError: "
      "simulated: network is unreachable (partial files stay under its "
      "downloads/ folder and are reused; run the command again once the "
      "cause is fixed)")
  assert offline.startswith(
      f"error: prepare_test_offline:1.0.0 in {tmp_path}: cannot reach its "
      "download host(s) (127.0.0.1:1: ")
  assert "copy the dataset's folder into the data dir" in offline
  assert "0 of 2 datasets prepared, 2 failed" in result.stderr
  assert prepare.unprepared(["prepare_test_failing"], str(tmp_path)) == [
      f"prepare_test_{n}:1.0.0 (read by prepare_test_{n}) is not prepared in "
      f"{tmp_path}: python -m prompt_tuning.data prepare prepare_test_{n} "
      f"--data_dir {tmp_path}" for n in ("broken", "offline")]


def _fake_downloads(tmp_path, request):
  """What TFDS's download_and_extract returns for RTE and SQuAD, made here."""
  if isinstance(request, str):  # super_glue: one zip, one folder per task
    folder = tmp_path / "fake_downloads" / "rte"
    (folder / "RTE").mkdir(parents=True, exist_ok=True)
    for split, label in (("train", "entailment"), ("val", "not_entailment"),
                         ("test", None)):
      row = {"premise": f"A {split} premise.", "hypothesis": "A hypothesis.",
             "idx": 0, **({"label": label} if label else {})}
      (folder / "RTE" / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    return str(folder)
  files = {}
  for key in request:  # squad: {"train": url, "dev": url}
    path = tmp_path / "fake_downloads" / f"squad_{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{
        "context": "The U.S. capital is Washington.",
        "qas": [{"id": f"{key}0", "question": "What is the capital?",
                 "answers": [{"text": "Washington", "answer_start": 21}]}]}]}]}))
    files[key] = str(path)
  return files


def test_paper_builders_prepare_without_beam_and_tasks_read_them(
    tmp_path, monkeypatch):
  registry.import_builtin()
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # import fails
  monkeypatch.setattr(
      tfds.download.DownloadManager, "download_and_extract",
      lambda self, request: _fake_downloads(tmp_path, request))
  names = ["super_glue_rte_v102", "squad_v010_allanswers"]
  data_dir = str(tmp_path / "tfds")
  # The hosts answered (cache given): the check is not the subject here.
  hosts = {"dl.fbaipublicfiles.com:443": None,
           "rajpurkar.github.io:443": None}
  for dataset in prepare.tfds_datasets(names):
    assert prepare.prepare(dataset, data_dir, say=lambda _: None, hosts=hosts)
  assert prepare.unprepared(names, data_dir) == []
  # Read through each task's own preprocessors, from that data dir.
  got = {}
  for name in names:
    task = seqio.get_mixture_or_task(name)
    copy = seqio.Task(f"prepare_test_copy_{name}", source=seqio.TfdsDataSource(
        task.source.tfds_dataset.name, splits=("train", "validation"),
        tfds_data_dir=data_dir), preprocessors=task.preprocessors,
                      output_features=task.output_features)
    (example,) = copy.get_dataset(None, split="validation", shuffle=False
                                  ).as_numpy_iterator()
    got[name] = (example["inputs_pretokenized"].decode(),
                 example["targets_pretokenized"].decode())
  assert got == {
      "super_glue_rte_v102": ("rte hypothesis: A hypothesis. premise: A val "
                              "premise.", "not_entailment"),
      "squad_v010_allanswers": ("question: What is the capital ? context: The "
                                "U . S . capital is Washington . ",
                                "Washington")}


def test_download_hosts_come_from_the_config_else_the_checksums(tmp_path):
  def urls(name):
    return prepare._config_urls(tfds.builder(name, data_dir=str(tmp_path)))
  # super_glue's config also has a homepage `url`: not a download.
  assert urls("super_glue/rte:1.0.2") == [
      "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/RTE.zip"]
  # TFDS 4.9.10 points MRQA's BioASQ at a page behind a registration.
  assert urls("mrqa/bio_asq:1.0.0") == [
      "http://participants-area.bioasq.org/MRQA2019/"]
  assert urls("prepare_test_offline:1.0.0") == []  # its checksums then
