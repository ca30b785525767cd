"""One frozen model, many prompts, end to end on the quickstart model.

Prompts are the embeddings of task prefixes the quickstart T5 was pretrained
with ('sentiment: ', 'sentiment:', 'first: '; 11, 10 and 7 positions), so
they do different, checkable things without any training. The reference for
"each prompt alone" is `PromptedT5` with one shared prompt (a separate code
path) and, for the ensemble, seqio's evaluator run once per prompt. The
commands run in-process through `prompt_tools.main`.
"""

import collections
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import prompt_tuning.tasks.quickstart as quickstart
from prompt_tuning import infer
from prompt_tuning import prompt_tools
from prompt_tuning.models import decoding
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import merge_params
from prompt_tuning.serving import ensemble
from prompt_tuning.serving import frozen as frozen_lib
from prompt_tuning.training import eval_logs
from prompt_tuning.training import evaluation
from prompt_tuning.training.inference import DecodeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CHECKPOINT = os.path.join(ROOT, "tasks", "quickstart_checkpoint")
TASK = quickstart.TASKLESS_TASK
LENGTHS = {"inputs": 64, "targets": 16}
TEXTS = {"sent": "sentiment: ", "sent2": "sentiment:", "first": "first: "}
# Rows per call of every single-prompt reference (one compilation each).
BATCH = 40
NUM_EXAMPLES = 80


@functools.lru_cache(maxsize=None)
def _model():
  return load_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
  """name -> (path, [P, H]); 'sent2' is saved as a run directory."""
  _, params = _model()
  table = np.asarray(params["token_embedder"]["embedding"])
  root = tmp_path_factory.mktemp("prompts")
  out = {}
  for name, text in TEXTS.items():
    value = table[seqio.ByteVocabulary().encode(text)]
    if name == "sent2":
      os.makedirs(root / "run" / "prompts")
      np.save(root / "run" / "prompts" / "step_3.npy", value)
      path = str(root / "run")
    else:
      path = str(root / f"{name}.npy")
      np.save(path, value)
    out[name] = (path, value)
  return out


@functools.partial(jax.jit, static_argnums=(0,))
def _alone(model, params, tokens, candidates):
  """Greedy tokens [B, L] and label scores [B, C] with one shared prompt."""
  greedy = decoding.greedy_decode(model, params, tokens, LENGTHS["targets"])
  scores = jnp.stack([decoding.score(model, params, tokens, jnp.broadcast_to(
      c, (tokens.shape[0], c.shape[0]))) for c in candidates], axis=-1)
  return greedy, scores


_ALONE = {}


def _alone_fns(prompts):
  """name -> (tokens [BATCH, T] -> (greedy [BATCH, L], scores [BATCH, 2]))."""
  if _ALONE:
    return _ALONE
  config, frozen = _model()
  vocab = seqio.ByteVocabulary()
  candidates = jnp.asarray(evaluation.label_candidates(
      quickstart.LABELS, vocab, LENGTHS["targets"]))
  fns = {}
  for name, (_, value) in prompts.items():
    model = PromptedT5(config, value.shape[0])
    params = merge_params({"encoder": {"prompt": {"prompt": value}}}, frozen)
    fns[name] = functools.partial(_alone, model, params,
                                  candidates=candidates)
  _ALONE.update(fns)
  return fns


def _tokens(text):
  vocab = seqio.ByteVocabulary()
  ids = list(vocab.encode(text)) + [1]
  row = np.pad(ids, (0, LENGTHS["inputs"] - len(ids))).astype(np.int32)
  return np.pad(row[None], ((0, BATCH - 1), (0, 0)))  # [BATCH, T]


def _run(*argv):
  assert prompt_tools.main([str(a) for a in argv]) == 0


def test_mixed_rows_equal_each_prompt_alone(tmp_path, prompts):
  texts = quickstart.examples(TASK, "validation")["inputs"][:2]
  rows = []
  for i, text in enumerate(texts):
    rows.append({"prompt": "first", "inputs": text, "id": i})
    rows.append({"task": TASK, "inputs": text, "id": i})  # -> 'sent'
    rows.append({"prompt": "sent2", "inputs": text, "id": i})
  with open(tmp_path / "rows.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  library = [f"sent:{TASK}={prompts['sent'][0]}",
             f"sent2={prompts['sent2'][0]}", f"first={prompts['first'][0]}"]
  flags = ["--checkpoint", CHECKPOINT, "--input", tmp_path / "rows.jsonl",
           "--inputs_length", 64, "--targets_length", 16, "--batch_size", 8,
           "--mesh_shape", "4,2", "--task_module", "prompt_tuning.tasks.quickstart"]
  for spec in library:
    flags += ["--prompt", spec]
  # The gin entry point's --mixed form is the same command.
  assert infer.main(["--mixed", *map(str, flags), "--output",
                     str(tmp_path / "decoded.jsonl")]) == 0
  _run("infer", *flags, "--output", tmp_path / "ranked.jsonl",
       "--rank_classification")
  decoded = eval_logs.read_predictions_jsonl(tmp_path / "decoded.jsonl")
  ranked = eval_logs.read_predictions_jsonl(tmp_path / "ranked.jsonl")
  assert [r["prompt"] for r in decoded[:3]] == ["first", "sent", "sent2"]
  alone = _alone_fns(prompts)
  vocab = seqio.ByteVocabulary()
  for row, out, rank_out in zip(rows, decoded, ranked):
    assert {k: out[k] for k in row} == row
    greedy, scores = alone[out["prompt"]](_tokens(row["inputs"]))
    greedy = evaluation.clear_after_eos(np.asarray(greedy), 1)[0]
    assert out["prediction"] == vocab.decode(greedy.tolist()), row
    if out["prompt"] == "first":  # no task, no labels: decoded
      assert rank_out["prediction"] == out["prediction"]
    else:
      assert rank_out["prediction"] == quickstart.LABELS[int(np.argmax(
          scores[0]))], row
  # The prompts do different things: 'first' returns the first word.
  assert decoded[0]["prediction"] == texts[0].split()[0]
  assert decoded[1]["prediction"] in quickstart.LABELS


@pytest.mark.parametrize("rank", [False, True], ids=["decode", "rank"])
def test_ensemble_equals_separate_evaluations_and_vote(prompts, rank):
  config, _ = _model()
  model = frozen_lib.load_frozen(CHECKPOINT, mesh_shape=(4, 2))
  library = frozen_lib.load_library({n: p for n, (p, _) in prompts.items()},
                                    config.emb_dim)
  runner = frozen_lib.MixedRunner(model, library,
                                  DecodeConfig(rank_classification=rank),
                                  max_decode_length=LENGTHS["targets"])
  report = ensemble.evaluate_prompts(runner, TASK, LENGTHS, "validation",
                                     BATCH, NUM_EXAMPLES)[TASK]
  evaluator = evaluation.Evaluator(TASK, LENGTHS, BATCH, split="validation",
                                   num_examples=NUM_EXAMPLES)
  alone = _alone_fns(prompts)
  separate, predictions = {}, {}
  for name in prompts:
    predict = lambda batch, n=name: np.asarray(
        alone[n](batch["encoder_input_tokens"])[0])
    ranker = (lambda batch, candidates, n=name: np.asarray(
        alone[n](batch["encoder_input_tokens"])[1])) if rank else None
    separate[name] = evaluator.evaluate(predict, rank_batch=ranker)[TASK]
    predictions[name] = [r["prediction"] for r in
                         evaluator.predict(predict, rank_batch=ranker)[TASK]]
  assert report["prompts"] == separate
  # The vote by hand: most common prediction, ties to the earliest prompt.
  names = list(prompts)
  targets = quickstart.examples(TASK, "validation")["targets"][:NUM_EXAMPLES]
  votes = []
  for i in range(len(targets)):
    row = [predictions[n][i] for n in names]
    counts = collections.Counter(row)
    votes.append(max(row, key=lambda p: (counts[p], -row.index(p))))
  accuracy = 100 * np.mean([quickstart.postprocess_label(v) == t
                            for v, t in zip(votes, targets)])
  assert report["vote"]["accuracy"] == pytest.approx(accuracy)
  accuracies = [separate[n]["accuracy"] for n in names]
  assert report["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
  assert report["best"]["accuracy"] == max(accuracies)
  assert separate["sent"]["accuracy"] > 90  # the prompts really work


def test_nearest_similarity_and_peft_commands(tmp_path, prompts, capsys):
  sent_path, sent = prompts["sent"]
  _run("nearest", "--checkpoint", CHECKPOINT, "--prompt", sent_path, "--k", 3,
       "--task", TASK, "--mesh_shape", "4,2", "--fsdp", "--json",
       "--task_module", "prompt_tuning.tasks.quickstart")
  records = json.loads(capsys.readouterr().out)
  assert len(records) == len(TEXTS["sent"])
  # Each position is a token embedding: its nearest token is that token.
  assert "".join(r["neighbours"][0]["token"] for r in records) == "sentiment: "
  assert records[0]["neighbours"][0]["cosine"] == pytest.approx(1.0)
  # 's', 'e', 'n', 't', 'i' spell 'positive'/'negative' letters: marked.
  assert records[1]["neighbours"][0]["label"] == "positive/negative"
  _run("similarity", "--target", sent_path,
       "--source", f"first={prompts['first'][0]}",
       "--source", f"sent2={prompts['sent2'][0]}", "--json")
  ranking = json.loads(capsys.readouterr().out)
  assert [r["name"] for r in ranking] == ["sent2", "first"]
  assert ranking[0]["max_token"] > ranking[1]["max_token"]
  _run("export-peft", "--checkpoint", CHECKPOINT, "--prompt", sent_path,
       "--output_dir", tmp_path / "adapter")
  _run("import-peft", "--adapter", tmp_path / "adapter", "--output",
       tmp_path / "back.npy")
  np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), sent)
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    adapter = json.load(f)
  assert {k: adapter[k] for k in (
      "peft_type", "task_type", "num_virtual_tokens", "token_dim",
      "num_transformer_submodules", "num_attention_heads", "num_layers")} == {
          "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
          "num_virtual_tokens": 11, "token_dim": 64,
          "num_transformer_submodules": 1, "num_attention_heads": 4,
          "num_layers": 2}


def test_user_errors_are_one_line(tmp_path, prompts, capsys):
  (tmp_path / "rows.jsonl").write_text('{"prompt": "nope", "inputs": "x"}\n')
  code = prompt_tools.main(["infer", "--checkpoint", CHECKPOINT, "--prompt",
                            f"a={prompts['first'][0]}", "--input",
                            str(tmp_path / "rows.jsonl"), "--output",
                            str(tmp_path / "o.jsonl"), "--vocabulary", "byte",
                            "--mesh_shape", "4,2", "--batch_size", "8"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and err == [
      "error: No prompt named 'nope' in the library (has: a)."]


def test_peft_logits_equal_ours(tmp_path, prompts):
  """Real PEFT on the HF T5 of the same frozen model (torch extra only)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft_lib = pytest.importorskip("peft")
  sent_path, sent = prompts["sent"]
  _run("export-peft", "--checkpoint", CHECKPOINT, "--prompt", sent_path,
       "--output_dir", tmp_path / "adapter")
  base = transformers.T5ForConditionalGeneration.from_pretrained(
      CHECKPOINT, torch_dtype=torch.float32)
  model = peft_lib.PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
  model.eval()
  tokens = np.concatenate([_tokens("happy cat awful angry")[:1],
                           _tokens("sunny dog")[:1]])
  targets = np.array([[3 + ord(c) for c in "negative"] + [1],
                      [3 + ord(c) for c in "positive"] + [1]], np.int32)
  decoder_inputs = np.asarray(decoding.shift_right(targets))
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(decoder_inputs,
                                                  dtype=torch.long)
                   ).logits.numpy()
  config, frozen = _model()
  params = merge_params({"encoder": {"prompt": {"prompt": sent}}}, frozen)
  ours = PromptedT5(config.replace(dtype="float32"), sent.shape[0]).apply(
      {"params": params}, tokens, decoder_inputs, targets)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)
