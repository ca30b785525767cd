"""Every built-in task and mixture yields batches; catalogue, CLI, custom tasks.

The TFDS-backed tasks run on `tfds.testing.mock_data` (random examples
generated from each dataset's feature spec; no files, no network) through the
project's own input pipeline (`pipeline.get_dataset`: seqio, then the
encoder-decoder feature converter). Postprocessors and metrics are checked
end to end through `evaluation.Evaluator` with fake model functions, and the
custom-task route from temporary TSV and JSONL files.
"""

import json

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from prompt_tuning.data import pipeline
from prompt_tuning.training import evaluation
from prompt_tuning.data import registry
from prompt_tuning.data import custom_tasks

registry.import_builtin()
LENGTHS = {"inputs": 64, "targets": 8}
_TFDS_FAMILIES = ("super_glue", "taskless_super_glue", "glue",
                  "taskless_glue", "mrqa", "paraphrase")
_NAMES = [i.name for i in registry.infos()
          if i.family in _TFDS_FAMILIES]


def test_catalogue_has_every_documented_name():
  names = set(_NAMES)
  for config in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic",
                 "axb", "axg"):
    assert f"super_glue_{config}_v102" in names
    assert f"taskless_super_glue_{config}_v102" in names
  for wsc in ("simple_train", "simple_eval", "simple"):
    assert f"super_glue_wsc_v102_{wsc}" in names
  assert {"super_glue_v102_proportional",
          "taskless_super_glue_v102_proportional", "glue_v002_proportional",
          "glue_sst2_v002", "taskless_glue_sst2_v002",
          "paraphrase_qqp_to_mrpc_v002", "paraphrase_mrpc_to_qqp_v002"} <= names
  for ood in ("bio_asq", "drop", "duo_rc", "race", "relation_extraction",
              "textbook_qa", "news_qa", "trivia_qa", "search_qa", "hotpot_qa",
              "natural_questions"):
    assert f"mrqa_squad_to_{ood}_v100" in names
  assert {"dpr_v001_simple", "taskless_dpr_v001_simple",
          "squad_v010_allanswers", "mrqa_squad_v100"} <= names
  # T5's SuperGLUE mixture, with DPR and the diagnostics (rate 0).
  mixture = seqio.get_mixture_or_task("super_glue_v102_proportional")
  assert sorted(t.name for t in mixture.tasks) == sorted(
      [f"super_glue_{c}_v102" for c in ("boolq", "cb", "copa", "multirc",
                                        "record", "rte", "wic", "axb",
                                        "axg")] +
      ["super_glue_wsc_v102_simple_train", "super_glue_wsc_v102_simple_eval",
       "dpr_v001_simple"])
  # Proportional to training examples; WSC's eval task never trains.
  assert mixture.get_rate(seqio.get_mixture_or_task(
      "super_glue_record_v102")) == 138854
  assert mixture.get_rate(seqio.get_mixture_or_task("dpr_v001_simple")) == (
      1322)
  assert mixture.get_rate(seqio.get_mixture_or_task(
      "super_glue_wsc_v102_simple_eval")) == 0
  # T5's GLUE mixture: no WNLI, T5's QQP rate (glue/qqp:1.0.0's size).
  glue_mix = seqio.get_mixture_or_task("glue_v002_proportional")
  members = {t.name: glue_mix.get_rate(t) for t in glue_mix.tasks}
  assert "glue_wnli_v002" not in members
  assert members["glue_qqp_v002"] == 363849
  assert members["glue_ax_v002"] == 0


def test_mrqa_tasks_and_mixtures():
  # The paper's SQuAD is T5's (TFDS squad/v1.1), not MRQA's copy.
  squad = seqio.get_mixture_or_task("squad_v010_allanswers")
  assert squad.source.tfds_dataset.name == "squad/v1.1:3.0.0"
  table1 = seqio.get_mixture_or_task("mrqa_squad_to_out_of_domain_v100")
  rates = {t.name: table1.get_rate(t) for t in table1.tasks}
  assert rates == {"squad_v010_allanswers": 1.0, **{
      f"mrqa_{c}_v100": 0.0 for c in ("bio_asq", "drop", "duo_rc", "race",
                                      "relation_extraction", "textbook_qa")}}
  # The out-of-domain sets' TFDS 'test' split (MRQA's dev) is 'validation'.
  ood = seqio.get_mixture_or_task("mrqa_textbook_qa_v100").source
  assert ood.tfds_dataset.name == "mrqa/textbook_qa:1.0.0"
  assert tuple(ood.splits) == ("validation",)
  assert ood.tfds_dataset._split_map == {"validation": "test"}  # pylint: disable=protected-access
  pair = seqio.get_mixture_or_task("mrqa_squad_to_news_qa_v100")
  assert {t.name for t in pair.tasks} == {"squad_v010_allanswers",
                                          "mrqa_news_qa_v100"}


@pytest.mark.parametrize("name", _NAMES)
def test_every_tfds_task_yields_batches(name):
  provider = seqio.get_mixture_or_task(name)
  split = "train" if "train" in provider.splits else provider.splits[0]
  with tfds.testing.mock_data(num_examples=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    batches = pipeline.get_dataset(name, LENGTHS, split, global_batch_size=2,
                               shuffle=False, seed=0, repeat=True, shard_id=0,
                               num_shards=1)
    batch = next(batches)
  assert set(batch) == set(pipeline.MODEL_FEATURES)
  assert batch["encoder_input_tokens"].shape == (2, LENGTHS["inputs"])
  assert batch["decoder_target_tokens"].shape == (2, LENGTHS["targets"])
  # Every example has real inputs and at least an EOS target.
  assert (batch["encoder_input_tokens"][:, 0] != 0).all()
  assert (batch["decoder_target_tokens"][:, 0] != 0).all()


# Every evaluated task whose metrics a perfect prediction maximises (WSC's
# accuracy instead measures how often the candidate is the referent, and
# STS-B's correlations are undefined on constant mock labels). The taskless
# twins share their postprocessors and metrics, so they are left out here.
_EVAL_NAMES = [n for n in _NAMES if "wsc" not in n and "stsb" not in n and
               not n.startswith("taskless_") and
               "validation" in seqio.get_mixture_or_task(n).splits]


@pytest.fixture
def mock_tfds(monkeypatch):
  """TFDS mock data; seqio's in-memory cache is off (it reads split sizes,
  which mock data lacks; `pipeline.get_dataset` passes the same flag)."""
  get_dataset = seqio.Task.get_dataset

  def without_mem_cache(self, *args, **kwargs):
    kwargs["try_in_mem_cache"] = False
    return get_dataset(self, *args, **kwargs)
  monkeypatch.setattr(seqio.Task, "get_dataset", without_mem_cache)
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.mark.parametrize("name", _EVAL_NAMES)
def test_perfect_predictions_score_perfectly(name, mock_tfds):
  del mock_tfds
  evaluator = evaluation.Evaluator(name, {"inputs": 512, "targets": 64},
                                   batch_size=4)
  results = evaluator.evaluate(lambda batch: batch["decoder_target_tokens"])
  assert results
  for task, scores in results.items():
    if "wsc" in task:  # In the SuperGLUE mixture; see _EVAL_NAMES.
      continue
    for metric, value in scores.items():
      expected = 0.0 if metric == "invalid_prediction_rate" else 100.0
      if metric == "f1" and "em" not in scores and value == 0.0:
        # Binary F1 is 0 when the mock labels hold no positive example.
        continue
      assert value == pytest.approx(expected), (task, metric, value)


def test_class_labels_by_name():
  assert registry.class_labels("super_glue_cb_v102") == (
      "entailment", "contradiction", "neutral")
  assert registry.class_labels("taskless_super_glue_rte_v102") == (
      "entailment", "not_entailment")
  assert registry.class_labels("mrqa_squad_v100") == ()
  assert registry.class_labels("dpr_v001_simple") == ()
  assert registry.class_labels("super_glue_record_v102") == ()
  assert registry.class_labels("paraphrase_qqp_to_mrpc_v002") == (
      "not_equivalent", "equivalent")
  with pytest.raises(ValueError, match="No SeqIO task or mixture named "
                     "'glue_sst_v002' .close matches: glue_sst2_v002"):
    registry.class_labels("glue_sst_v002")


def test_list_command(capsys):
  assert registry.main(["list", "--family", "paraphrase"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in out] == [
      "paraphrase_mrpc_to_qqp_v002", "paraphrase_mrpc_v002",
      "paraphrase_qqp_to_mrpc_v002", "paraphrase_qqp_v002"]
  assert registry.main(["labels", "glue_sst2_v002"]) == 0
  assert capsys.readouterr().out.split() == ["negative", "positive"]
  assert registry.main(["list", "--family", "nope"]) == 2
  assert "no registered tasks in family 'nope'" in capsys.readouterr().err


def _postprocess(task_name, output, example, is_target):
  task = seqio.get_mixture_or_task(task_name)
  return task.postprocess_fn(output, example=example, is_target=is_target)


def test_postprocessors_and_metrics_of_the_task_definitions():
  # CB: label words -> ids; an invalid prediction is wrong and counted.
  targets = [_postprocess("super_glue_cb_v102", t, {}, True)
             for t in ("entailment", "neutral", "contradiction")]
  preds = [_postprocess("super_glue_cb_v102", p, {}, False)
           for p in ("entailment", "maybe", "contradiction")]
  assert targets == [0, 2, 1] and preds == [0, -1, 1]
  task = seqio.get_mixture_or_task("super_glue_cb_v102")
  scores = {}
  for metric in task.metric_fns:
    scores.update(metric(targets, preds))
  assert scores["accuracy"] == pytest.approx(200 / 3)
  assert scores["invalid_prediction_rate"] == pytest.approx(100 / 3)
  # Macro F1 over 3 classes: F1 = 1, 1, 0.
  assert scores["mean_3class_f1"] == pytest.approx(200 / 3)


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def test_custom_task_from_tsv_and_jsonl(tmp_path):
  train = _write(tmp_path / "train.tsv",
                 "text\tlabel\ngood film\t1\nbad \"film\"\t0\nfine\t1\n")
  dev = _write(tmp_path / "dev.jsonl",
               json.dumps({"text": "great", "label": 1}) + "\n\n" +
               json.dumps({"text": "awful", "label": 0}) + "\n")
  name = custom_tasks.register_from_files(
      "test_custom_sentiment", {"train": train, "validation": dev},
      text_fields=("text",), label_words=("negative", "positive"),
      task_prefix="sentiment", metric_names=("accuracy", "f1"),
      vocabulary=seqio.ByteVocabulary())
  assert registry.class_labels(name) == ("negative", "positive")
  task = seqio.get_mixture_or_task(name)
  rows = list(task.get_dataset(LENGTHS, split="train", shuffle=False,
                               try_in_mem_cache=False).as_numpy_iterator())
  assert [r["inputs_pretokenized"].decode() for r in rows] == [
      "sentiment text: good film", "sentiment text: bad \"film\"",
      "sentiment text: fine"]
  assert [r["targets_pretokenized"].decode() for r in rows] == [
      "positive", "negative", "positive"]
  evaluator = evaluation.Evaluator(name, {"inputs": 32, "targets": 12},
                                   batch_size=4)
  metrics = evaluator.evaluate(lambda batch: batch["decoder_target_tokens"])
  assert metrics[name] == {"accuracy": 100.0, "f1": 100.0,
                           "invalid_prediction_rate": 0.0}


def test_custom_generation_task_scores_exact_match_and_f1(tmp_path):
  path = _write(tmp_path / "qa.jsonl", "".join(
      json.dumps({"question": q, "answer": a}) + "\n"
      for q, a in (("capital of france", "Paris"), ("two plus two", "four"))))
  name = custom_tasks.register_from_files(
      "test_custom_qa", {"validation": path}, inputs_field="question",
      targets_field="answer", vocabulary=seqio.ByteVocabulary())
  assert registry.class_labels(name) == ()
  evaluator = evaluation.Evaluator(name, {"inputs": 32, "targets": 12},
                                   batch_size=2)
  metrics = evaluator.evaluate(lambda batch: batch["decoder_target_tokens"])
  assert metrics[name] == {"em": 100.0, "f1": 100.0}


@pytest.mark.parametrize("content, kwargs, message", [
    ("text\tlabel\nhello\t1\n", {"text_fields": ("txt",)},
     r"no field 'txt' \(fields: text, label\)"),
    ("text\tlabel\nhello\t7\n", {"text_fields": ("text",),
                                 "label_words": ("no", "yes")},
     "label '7' is not one of"),
    ("text\tlabel\nhello\n", {"text_fields": ("text",)},
     "line 2: 1 tab-separated values for 2 columns"),
    ("text\tlabel\nhello\t1\n", {"text_fields": ("text",),
                                 "metric_names": ("bleu",)},
     r"Unknown metric\(s\) \['bleu'\]"),
])
def test_custom_task_errors_are_one_line(tmp_path, content, kwargs, message):
  path = _write(tmp_path / "data.tsv", content)
  with pytest.raises(ValueError, match=message) as error:
    custom_tasks.register_from_files("test_custom_bad", {"train": path},
                                     vocabulary=seqio.ByteVocabulary(),
                                     **kwargs)
  assert "\n" not in str(error.value)
  assert "test_custom_bad" not in seqio.TaskRegistry.names()


def test_custom_task_missing_file_and_bad_json(tmp_path):
  with pytest.raises(ValueError, match="Task file not found"):
    custom_tasks.register_from_files(
        "test_custom_missing", {"train": str(tmp_path / "none.tsv")},
        text_fields=("text",))
  bad = _write(tmp_path / "bad.jsonl", "{\"text\": 1}\nnot json\n")
  with pytest.raises(ValueError, match="bad.jsonl line 2: not JSON"):
    custom_tasks.register_from_files("test_custom_json", {"train": bad},
                                     text_fields=("text",))


def test_shipped_custom_example_task():
  from prompt_tuning.tasks import custom_example  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(custom_example.TASK)
  assert registry.class_labels(custom_example.TASK) == ("negative",
                                                             "positive")
  rows = list(task.get_dataset(LENGTHS, split="validation", shuffle=False,
                               try_in_mem_cache=False).as_numpy_iterator())
  assert len(rows) == 4
  assert rows[0]["inputs_pretokenized"].decode().startswith("review: a ")
  assert rows[0]["targets_pretokenized"].decode() == "positive"


def test_rank_classification_never_predicts_outside_the_labels():
  from tests import tiny_tasks  # pylint: disable=g-import-not-at-top
  tiny_tasks.register()
  evaluator = evaluation.Evaluator("tiny_classify", {"inputs": 32,
                                                     "targets": 8},
                                   batch_size=8)
  assert evaluator.ranked_tasks() == ("tiny_classify",)
  vocab = seqio.ByteVocabulary()
  candidates = evaluation.label_candidates(("yes", "no"), vocab, 8)
  seen = []

  def rank_prefer_no(batch, cands):
    seen.append(cands)
    scores = np.zeros((batch["encoder_input_tokens"].shape[0], len(cands)))
    scores[:, 1] = 1.0
    return scores

  # Decoding would fail: predict_batch is never called for a labelled task.
  metrics = evaluator.evaluate(None, rank_batch=rank_prefer_no)
  expected = tiny_tasks.examples("tiny_classify", "validation")["targets"]
  assert metrics["tiny_classify"]["accuracy"] == pytest.approx(
      expected.count("no") / len(expected))
  np.testing.assert_array_equal(seen[0], candidates)
  records = evaluator.predict(None, rank_batch=rank_prefer_no)
  assert {r["prediction"] for r in records["tiny_classify"]} == {"no"}
  with pytest.raises(ValueError, match="more than the targets length 2"):
    evaluation.label_candidates(("yes",), vocab, 2)
