"""Text-to-text formats of the built-in tasks, checked on hand-written examples.

Each case feeds one TFDS-shaped example through a registered task's text
preprocessors (everything before tokenization) and compares the resulting
strings with the documented format: T5's for GLUE, SuperGLUE, DPR and SQuAD,
the paper's for MRQA and the paraphrase pair, and the taskless forms (task
word removed). `t5_formats_oracle_test` checks the same against the T5
library itself on generated examples.
"""

import seqio
import tensorflow as tf

from prompt_tuning import metrics
from prompt_tuning.data import registry

registry.import_builtin(("glue", "mrqa", "paraphrase", "super_glue"))


def _formatted(task_name, example):
  """The task's text preprocessors applied to one example -> list of dicts."""
  task = seqio.get_mixture_or_task(task_name)
  ds = tf.data.Dataset.from_tensors(example)
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    ds = step(ds)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({k: (v.decode() if isinstance(v, bytes) else v)
                for k, v in ex.items()})
  return out


def _one(task_name, example):
  rows = _formatted(task_name, example)
  assert len(rows) == 1, rows
  return rows[0]["inputs"], rows[0]["targets"]


def _both(name, example, inputs, targets, taskless_inputs):
  assert _one(name, example) == (inputs, targets)
  assert _one("taskless_" + name, example) == (taskless_inputs, targets)


def test_rte():
  ex = {"premise": "A cat sat on the mat.", "hypothesis": "A cat sits.",
        "label": 0, "idx": 7}
  _both("super_glue_rte_v102", ex,
        "rte hypothesis: A cat sits. premise: A cat sat on the mat.",
        "entailment", "hypothesis: A cat sits. premise: A cat sat on the mat.")
  assert _formatted("super_glue_rte_v102", ex)[0]["idx"] == 7


def test_boolq_fields_sorted_by_name():
  ex = {"question": "is it wet", "passage": "Rain fell.", "label": 1,
        "idx": 0}
  _both("super_glue_boolq_v102", ex,
        "boolq passage: Rain fell. question: is it wet", "True",
        "passage: Rain fell. question: is it wet")


def test_cb_three_labels_and_hidden_test_label():
  ex = {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 1}
  _both("super_glue_cb_v102", ex, "cb hypothesis: H. premise: P.", "neutral",
        "hypothesis: H. premise: P.")
  hidden = dict(ex, label=-1)
  assert _one("super_glue_cb_v102", hidden)[1] == "<unk>"


def test_copa():
  ex = {"premise": "The man broke his toe.", "question": "cause",
        "choice1": "He dropped a hammer.", "choice2": "He ran.", "label": 0,
        "idx": 3}
  _both("super_glue_copa_v102", ex,
        "copa choice1: He dropped a hammer. choice2: He ran. premise: The man "
        "broke his toe. question: cause", "choice1",
        "choice1: He dropped a hammer. choice2: He ran. premise: The man "
        "broke his toe. question: cause")


def test_wic_fixed_field_order_without_indices():
  ex = {"sentence1": "Bank of a river.", "sentence2": "Bank loan.",
        "word": "bank", "start1": 0, "end1": 4, "start2": 0, "end2": 4,
        "label": 0, "idx": 2}
  _both("super_glue_wic_v102", ex,
        "wic sentence1: Bank of a river. sentence2: Bank loan. word: bank",
        "False", "sentence1: Bank of a river. sentence2: Bank loan. word: bank")


def test_multirc_strips_html_and_keeps_question_group():
  ex = {"question": "Who ran?", "answer": "Tom",
        "paragraph": "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>Ann sat.",
        "label": 1, "idx": {"paragraph": 4, "question": 11, "answer": 2}}
  rows = _formatted("super_glue_multirc_v102", ex)
  assert rows[0]["inputs"] == ("multirc question: Who ran? answer: Tom "
                               "paragraph: Sent 1: Tom ran. Sent 2: Ann sat.")
  assert rows[0]["targets"] == "True"
  assert (rows[0]["idx/paragraph"], rows[0]["idx/question"],
          rows[0]["idx/answer"]) == (4, 11, 2)
  assert _one("taskless_super_glue_multirc_v102", ex)[0].startswith(
      "question: Who ran? answer: Tom paragraph: Sent 1:")


def test_axb_and_axg_read_as_rte():
  axb = {"sentence1": "S one.", "sentence2": "S two.", "label": 1, "idx": 0}
  _both("super_glue_axb_v102", axb, "rte hypothesis: S two. premise: S one.",
        "not_entailment", "hypothesis: S two. premise: S one.")
  axg = {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0}
  _both("super_glue_axg_v102", axg, "rte hypothesis: H. premise: P.",
        "entailment", "hypothesis: H. premise: P.")


def _record_example(answers):
  return {
      "passage": "Storm hits Texas.\n@highlight\nTexas floods\n@highlight\n"
                 "Rain! @highlight\nIt rained in Texas and Ohio.",
      "query": "@placeholder was flooded.",
      "entities": ["Texas", "Ohio"],
      "answers": tf.constant(answers, tf.string),
      "idx": {"passage": 5, "query": 9},
  }


def test_record_one_example_per_answer_with_all_answers_kept():
  rows = _formatted("super_glue_record_v102", _record_example(
      ["Texas", "Texas floods"]))
  assert [r["targets"] for r in rows] == ["Texas", "Texas floods"]
  expected = ("record query: @placeholder was flooded. entities: Texas, Ohio "
              "passage: Storm hits Texas. Texas floods. Rain! @highlight\n"
              "It rained in Texas and Ohio.")
  for row in rows:
    assert row["inputs"] == expected
    assert [a.decode() for a in row["answers"]] == ["Texas", "Texas floods"]
    assert (row["idx/passage"], row["idx/query"]) == (5, 9)
  taskless = _formatted("taskless_super_glue_record_v102",
                        _record_example(["Texas"]))
  assert taskless[0]["inputs"] == expected[len("record "):]


def test_record_without_answers_keeps_one_unk_example():
  rows = _formatted("super_glue_record_v102", _record_example([]))
  assert len(rows) == 1 and rows[0]["targets"] == "<unk>"
  assert list(rows[0]["answers"]) == []


def _wsc(text, span1, span2, index, label):
  return {"text": text, "span1_text": span1, "span1_index": 0,
          "span2_text": span2, "span2_index": index, "label": label,
          "idx": 0}


def test_wsc_simple_marks_pronoun_and_trains_on_correct_referents():
  right = _wsc("Mitchell asked Tom if he could lend some money.", "Tom", "he",
               4, 1)
  wrong = dict(right, span1_text="Mitchell", label=0)
  assert _one("super_glue_wsc_v102_simple_eval", right) == (
      "wsc: Mitchell asked Tom if *he* could lend some money.", "Tom")
  assert _one("super_glue_wsc_v102_simple_eval", wrong)[1] == "Mitchell"
  assert _formatted("super_glue_wsc_v102_simple_train", wrong) == []
  assert _one("super_glue_wsc_v102_simple_train", right)[1] == "Tom"
  assert _one("taskless_super_glue_wsc_v102_simple_eval", right)[0] == (
      "Mitchell asked Tom if *he* could lend some money.")
  # One of T5's two hard-coded texts whose pronoun index is off.
  special = _wsc("The boy continued to whip the pony , and eventually the "
                 "pony threw him over. John laughed out quite loud. \"Good "
                 "for him,\" he said. ", "the pony", "him", 21, 1)
  assert _one("super_glue_wsc_v102_simple_eval", special)[0] == (
      "wsc: The boy continued to whip the pony , and eventually the pony "
      "threw him over. John laughed out quite loud. \"Good for *him* ,\" he "
      "said.")


def test_glue_formats():
  _both("glue_sst2_v002", {"sentence": "a gem", "label": 1, "idx": 0},
        "sst2 sentence: a gem", "positive", "sentence: a gem")
  _both("glue_cola_v002", {"sentence": "Him went.", "label": 0, "idx": 0},
        "cola sentence: Him went.", "unacceptable", "sentence: Him went.")
  _both("glue_qqp_v002", {"question1": "Q1?", "question2": "Q2?", "label": 1,
                          "idx": 0},
        "qqp question1: Q1? question2: Q2?", "duplicate",
        "question1: Q1? question2: Q2?")
  _both("glue_mnli_matched_v002", {"premise": "P.", "hypothesis": "H.",
                                   "label": 1, "idx": 0},
        "mnli hypothesis: H. premise: P.", "neutral",
        "hypothesis: H. premise: P.")
  _both("glue_qnli_v002", {"question": "Q?", "sentence": "S.", "label": 1,
                           "idx": 0},
        "qnli question: Q? sentence: S.", "not_entailment",
        "question: Q? sentence: S.")
  _both("glue_wnli_v002", {"sentence1": "A.", "sentence2": "B.", "label": 1,
                           "idx": 0},
        "wnli sentence1: A. sentence2: B.", "entailment",
        "sentence1: A. sentence2: B.")


def test_stsb_rounds_to_a_fifth():
  ex = {"sentence1": "A.", "sentence2": "B.", "label": 3.71, "idx": 0}
  _both("glue_stsb_v002", ex, "stsb sentence1: A. sentence2: B.", "3.8",
        "sentence1: A. sentence2: B.")
  assert _one("glue_stsb_v002", dict(ex, label=0.09))[1] == "0.0"


def _mrqa_example(answers):
  return {"question": "Who led the U.S.-built team?",
          "context": "[DOC] The U.S.-led team   (2x) won.",
          "answers": tf.constant(answers, tf.string), "qid": "q1",
          "subset": "SQuAD"}


def test_mrqa_pads_punctuation_like_t5():
  # T5's SQuAD format: a space each side of every punctuation mark, then
  # whitespace runs collapsed (leading/trailing spaces kept as one).
  for name in ("mrqa_squad_v100", "mrqa_textbook_qa_v100"):
    rows = _formatted(name, _mrqa_example(["U.S.", "the U.S."]))
    assert rows[0]["inputs"] == (
        "question: Who led the U . S . - built team ? context: [ DOC ] The "
        "U . S . - led team ( 2x ) won . ")
    assert rows[0]["targets"] == rows[0]["answer"] == "U . S . "
    assert [a.decode() for a in rows[0]["answers"]] == ["U . S . ",
                                                        "the U . S . "]
    assert rows[0]["idx"] == "q1"


def test_padded_gold_answers_match_padded_predictions():
  # A prompt trained on padded targets writes 'U . S .': it is an exact
  # match only against the padded gold answers (SQuAD normalisation deletes
  # punctuation, not the spaces around it).
  task = seqio.get_mixture_or_task("mrqa_textbook_qa_v100")
  row = _formatted("mrqa_textbook_qa_v100", _mrqa_example(["U.S."]))[0]
  example = {"answers": row["answers"]}
  gold = task.postprocess_fn("", example=example, is_target=True)
  scores = {}
  for metric in task.metric_fns:
    scores.update(metric([gold], [task.postprocess_fn("U . S .")]))
  assert scores == {"em": 100.0, "f1": 100.0}
  unpadded = [task.postprocess_fn("U.S.", example={"answers": [b"U.S."]},
                                  is_target=True)]
  assert metrics.squad(unpadded, ["U . S ."])["em"] == 0.0


def test_squad_is_t5s_task():
  ex = {"id": "s1", "title": "T", "question": "Where's it?",
        "context": "In Paris, France.",
        "answers": {"text": tf.constant(["Paris", "Paris, France"]),
                    "answer_start": tf.constant([3, 3], tf.int32)}}
  rows = _formatted("squad_v010_allanswers", ex)
  assert rows[0]["inputs"] == ("question: Where ' s it ? context: In Paris "
                               ", France . ")
  assert rows[0]["targets"] == "Paris"
  assert [a.decode() for a in rows[0]["answers"]] == ["Paris",
                                                      "Paris , France"]
  assert (rows[0]["id"], rows[0]["question"]) == ("s1", "Where ' s it ? ")


def test_dpr_marks_the_first_delimited_pronoun():
  ex = {"sentence": "He said Bob asked Tom if he can lend, he said.",
        "pronoun": "he", "candidates": ["Bob", "Tom"], "label": 1}
  assert _one("dpr_v001_simple", ex) == (
      "wsc: He said Bob asked Tom if *he* can lend, he said.", "Tom")
  assert _one("taskless_dpr_v001_simple", ex)[0] == (
      "He said Bob asked Tom if *he* can lend, he said.")
  # Before ',' or '.' too; not inside a longer word nor before other marks.
  assert _one("dpr_v001_simple", dict(ex, sentence="Ask her, then."))[0] == (
      "wsc: Ask her, then.")
  assert _one("dpr_v001_simple", dict(ex, pronoun="her",
                                      sentence="Ask her, then."))[0] == (
      "wsc: Ask *her*, then.")
  assert _one("dpr_v001_simple", dict(ex, sentence="Then he! he."))[0] == (
      "wsc: Then he! *he*.")


def test_taskless_removes_through_the_first_space_only():
  # The official rule: '^[^ ]* ' once; tabs and newlines do not end the word.
  base = _wsc("Mitchell asked Tom if he could lend some money.", "Tom", "he",
              4, 1)
  tab = dict(base, text="\tMitchell asked Tom if he could lend some money.")
  assert _one("taskless_super_glue_wsc_v102_simple_eval", tab)[0] == (
      "\tMitchell asked Tom if *he* could lend some money.")
  glued = dict(base, text="\tMitchell\tasked Tom if he could lend money.",
               span2_index=3)
  assert _one("taskless_super_glue_wsc_v102_simple_eval", glued)[0] == (
      "\tMitchell\tasked Tom if *he* could lend money.")
  dpr = {"sentence": "\tHe asked him, he said.", "pronoun": "he",
         "candidates": ["A", "B"], "label": 0}
  assert _one("taskless_dpr_v001_simple", dpr)[0] == (
      "\tHe asked him, *he* said.")


def test_paraphrase_pair_shares_one_format_and_label_words():
  mrpc = {"sentence1": "It rained.", "sentence2": "Rain fell.", "label": 1,
          "idx": 0}
  qqp = {"question1": "Why is it wet?", "question2": "What made it wet?",
         "label": 1, "idx": 0}
  assert _one("paraphrase_mrpc_v002", mrpc) == (
      "sentence1: It rained. sentence2: Rain fell.", "equivalent")
  assert _one("paraphrase_qqp_v002", qqp) == (
      "sentence1: Why is it wet? sentence2: What made it wet?", "equivalent")
  assert _one("paraphrase_qqp_v002", dict(qqp, label=0))[1] == (
      "not_equivalent")
