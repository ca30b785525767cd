"""Nearest tokens, SPoT similarity and ensemble voting (numpy references).

Nearest tokens are checked against a brute-force numpy search on the dense
table, and on the (data=4, model=2) mesh with the table sharded as training
shards it (vocab over model; with FSDP also embed over data); the compiled
program must not gather the table.
"""

import re

import jax
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.prompts import ensemble
from prompt_tuning.prompts import nearest
from prompt_tuning.prompts import similarity

V, H, P, K = 64, 16, 5, 4


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(P, H)).astype(np.float32),
          rng.normal(size=(V, H)).astype(np.float32))


def _brute_force(prompt, table, k):
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cos = unit(prompt.astype(np.float64)) @ unit(table.astype(np.float64)).T
  ids = np.argsort(-cos, axis=1, kind="stable")[:, :k]
  return ids, np.take_along_axis(cos, ids, axis=1)


def _sharding(fsdp, shape):
  """The table's sharding in training on the (data=4, model=2) mesh."""
  mesh = partitioning.create_mesh((4, 2))
  return mesh, partitioning.sharding_for(
      ("vocab", "embed"), mesh, partitioning.logical_axis_rules(fsdp), shape)


@pytest.mark.parametrize("fsdp", [None, False, True],
                         ids=["dense", "vocab_sharded", "fsdp"])
def test_nearest_tokens_match_brute_force(fsdp):
  prompt, table = _data()
  want_ids, want_cos = _brute_force(prompt, table, K)
  embedding = table
  if fsdp is not None:
    mesh, sharding = _sharding(fsdp, table.shape)
    embedding = jax.device_put(table, sharding)
    assert len(embedding.sharding.device_set) == 8
    search, prompt_sharding = nearest.sharded_search(sharding, table.shape, K)
    hlo = search.lower(jax.device_put(prompt, prompt_sharding),
                       embedding).compile().as_text()
    # Only [P, k]-sized winners travel; no collective carries table rows.
    for line in re.findall(r".*all-gather.*", hlo):
      assert f"f32[{V},{H}]" not in line and f"[{V // 2},{H}]" not in line
  ids, cos = nearest.nearest_tokens(prompt, embedding, K)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(cos, want_cos, atol=1e-5)


def test_neighbours_mark_label_words_and_format():
  prompt, table = _data()
  table[7] = prompt[0] * 3  # token 7 is position 0's nearest neighbour
  labels = nearest.label_tokens(["ab", "b"], lambda s: [ord(c) - 90 for c in
                                                        s])  # a->7, b->8
  assert labels == {7: "ab", 8: "ab/b"}
  records = nearest.neighbours(prompt, table, 3, lambda i: f"t{i}", labels)
  first = records[0]["neighbours"][0]
  assert first == {"id": 7, "token": "t7", "cosine": 1.0, "label": "ab"}
  table_text = nearest.format_table(records)
  assert table_text.splitlines()[0].startswith("   0  *'t7'* (1.000)")
  with pytest.raises(ValueError, match="same H"):
    nearest.nearest_tokens(prompt[:, :3], table, 2)


def test_similarity_measures_and_ranking():
  rng = np.random.default_rng(1)
  target = rng.normal(size=(4, H))
  sources = {"same": target.copy(), "negated": -target,
             "longer": np.concatenate([target, rng.normal(size=(3, H))]),
             "noise": rng.normal(size=(2, H))}
  assert similarity.average(target, sources["same"]) == pytest.approx(1.0)
  assert similarity.average(target, sources["negated"]) == pytest.approx(-1)
  # Every target row appears in 'longer': its best match is itself.
  assert similarity.max_token(target, sources["longer"]) == pytest.approx(1)
  unit = target / np.linalg.norm(target, axis=1, keepdims=True)
  assert similarity.all_pairs(target, target) == pytest.approx(
      np.mean(unit @ unit.T))
  ranking = similarity.rank_sources(target, sources, "max_token")
  assert [n for n, _ in ranking][:2] == ["same", "longer"]
  assert similarity.rank_sources(target, sources)[-1][0] == "negated"
  assert set(ranking[0][1]) == {"average", "max_token", "all_pairs"}
  with pytest.raises(ValueError, match="Unknown similarity measure"):
    similarity.rank_sources(target, sources, "l2")


def test_replicate_split_vote_and_summary():
  batch = {"tokens": np.array([[1, 2], [3, 4]])}
  rows = ensemble.replicate(batch, 3)
  assert rows["tokens"].tolist() == [[1, 2]] * 3 + [[3, 4]] * 3
  assert rows["prompt_ids"].tolist() == [0, 1, 2, 0, 1, 2]
  per_example = ensemble.split_outputs(rows["tokens"], 3)
  assert per_example.shape == (2, 3, 2)
  predictions = np.array([[[5], [6], [6]],    # majority 6
                          [[7], [8], [9]],    # three-way tie: prompt 0's
                          [[4], [3], [3]]])   # majority 3
  assert ensemble.majority_vote(predictions).tolist() == [[6], [7], [3]]
  tie = np.array([[[1], [2], [2], [1]]])  # 2-2 tie: prompt 0's wins
  assert ensemble.majority_vote(tie).tolist() == [[1]]
  summary = ensemble.summarize({"a": {"acc": 50.0}, "b": {"acc": 70.0}},
                               {"acc": 65.0})
  assert summary["mean"] == {"acc": 60.0} and summary["best"] == {"acc": 70.0}
  assert summary["vote"] == {"acc": 65.0}


def test_ensemble_edges_one_prompt_dtypes_and_errors():
  batch = {"tokens": np.array([[1, 2], [3, 4]], np.int32)}
  one = ensemble.replicate(batch, 1)  # a one-prompt "ensemble" is allowed
  assert one["tokens"].tolist() == [[1, 2], [3, 4]]
  assert one["prompt_ids"].tolist() == [0, 0]
  assert one["prompt_ids"].dtype == np.int32
  with pytest.raises(ValueError,
                     match=r"^An ensemble needs at least one prompt; got 0\.$"):
    ensemble.replicate(batch, 0)
  with pytest.raises(ValueError, match=r"^5 rows are not a whole number of "
                     r"examples times 3 prompts\.$"):
    ensemble.split_outputs(np.zeros((5, 2)), 3)
  vote = ensemble.majority_vote(np.array([[[5], [5]]], np.int32))
  assert vote.dtype == np.int32 and vote.tolist() == [[5]]
  summary = ensemble.summarize({"only": {"acc": 40.0, "f1": 30.0}},
                               {"acc": 40.0, "f1": 30.0})
  assert summary == {"prompts": {"only": {"acc": 40.0, "f1": 30.0}},
                     "mean": {"acc": 40.0, "f1": 30.0},
                     "best": {"acc": 40.0, "f1": 30.0},
                     "vote": {"acc": 40.0, "f1": 30.0}}
  assert ensemble.summarize({}, {}) == {"prompts": {}, "mean": {}, "best": {},
                                        "vote": {}}


def test_similarity_against_float64_loops_and_shape_errors():
  rng = np.random.default_rng(2)
  target = rng.normal(size=(3, H)).astype(np.float32)
  source = rng.normal(size=(5, H)).astype(np.float32)
  cos = lambda a, b: float(np.dot(a, b) / np.linalg.norm(a) /
                           np.linalg.norm(b))
  t64, s64 = target.astype(np.float64), source.astype(np.float64)
  want_max = np.mean([max(cos(t, s) for s in s64) for t in t64])
  want_pairs = np.mean([cos(t, s) for t in t64 for s in s64])
  want_average = cos(t64.mean(0), s64.mean(0))
  # float32 prompts are compared in float64 (float32 sums would be ~1e-8 off).
  assert abs(similarity.max_token(target, source) - want_max) < 1e-12
  assert abs(similarity.all_pairs(target, source) - want_pairs) < 1e-12
  assert abs(similarity.average(target, source) - want_average) < 1e-12
  for t, s in ((target[0], source), (target, source[0]),
               (target, source[:, :3])):
    with pytest.raises(ValueError, match=(
        rf"^Prompts must be \[P, H\] of one width H; got "
        rf"{re.escape(str(t.shape))} and {re.escape(str(s.shape))}\.$")):
      similarity.max_token(t, s)


def test_neighbour_records_and_table_in_full():
  prompt, table = _data()  # P = 5 positions, k = 3 (not the default 5)
  want_ids, want_cos = _brute_force(prompt, table, 3)
  decode = lambda i: "" if i == want_ids[1, 0] else f"t{i}"
  labels = {int(want_ids[0, 1]): "yes"}
  records = nearest.neighbours(prompt, table, 3, decode, labels)
  expected = []
  for p in range(P):
    near = []
    for i, c in zip(want_ids[p], want_cos[p]):
      entry = {"id": int(i), "token": decode(int(i)), "cosine": round(c, 6)}
      if int(i) in labels:
        entry["label"] = "yes"
      near.append(entry)
    expected.append({"position": p, "neighbours": near})
  assert [r["position"] for r in records] == list(range(P))
  for got, want in zip(records, expected):
    assert [n["id"] for n in got["neighbours"]] == [
        n["id"] for n in want["neighbours"]]
    for g, w in zip(got["neighbours"], want["neighbours"]):
      assert g.keys() == w.keys() and g["token"] == w["token"]
      assert g.get("label") == w.get("label")
      # float32 search, rounded to 6 places: within one rounding step.
      assert abs(g["cosine"] - w["cosine"]) <= 2e-6
      assert g["cosine"] == round(g["cosine"], 6)
  small = [{"position": 0, "neighbours": [
               {"id": 7, "token": "good", "cosine": 0.91234, "label": "pos"},
               {"id": 3, "token": "", "cosine": -0.5}]},
           {"position": 12, "neighbours": [
               {"id": 9, "token": " x", "cosine": 0.0}]}]
  assert nearest.format_table(small) == (
      "   0  *'good'* (0.912)  <3> (-0.500)\n"
      "  12  ' x' (0.000)")


@pytest.mark.parametrize("fsdp", [None, True], ids=["dense", "fsdp"])
def test_nearest_tokens_bfloat16_table_k_bounds_and_prompt_sharding(fsdp):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  prompt, table = _data()
  table = table.astype(ml_dtypes.bfloat16)  # searched in float32
  want_ids, want_cos = _brute_force(prompt, table.astype(np.float32), K)
  embedding = table
  if fsdp is not None:
    mesh, sharding = _sharding(fsdp, table.shape)
    embedding = jax.device_put(table, sharding)
    rows = V // int(np.prod([mesh.shape[a] for a in
                             nearest._names(sharding.spec[0])]))  # pylint: disable=protected-access
    assert rows < V
    _, prompt_sharding = nearest.sharded_search(sharding, table.shape, rows)
    # The prompt's H is split like the table's H.
    assert prompt_sharding.spec == jax.sharding.PartitionSpec(
        None, sharding.spec[1])
    with pytest.raises(ValueError, match=(
        rf"^k={rows + 1} exceeds the {rows} rows of one vocabulary shard; ask "
        r"for fewer neighbours\.$")):
      nearest.sharded_search(sharding, table.shape, rows + 1)
  ids, cos = nearest.nearest_tokens(prompt, embedding, K)
  assert ids.dtype == np.int32 and cos.dtype == np.float32
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(cos, want_cos, atol=1e-5)


def test_nearest_tokens_takes_the_sharded_path_for_a_sharded_table(
    monkeypatch):
  prompt, table = _data()
  want_ids, _ = _brute_force(prompt, table, 5)
  mesh, sharding = _sharding(False, table.shape)
  sharded = jax.device_put(table, sharding)
  dense_calls = []
  dense = nearest._dense  # pylint: disable=protected-access
  monkeypatch.setattr(nearest, "_dense",
                      lambda *a: dense_calls.append(1) or dense(*a))
  ids, _ = nearest.nearest_tokens(prompt, sharded)  # k defaults to 5
  np.testing.assert_array_equal(ids, want_ids)
  assert not dense_calls  # the table was never searched whole
  ids, _ = nearest.nearest_tokens(prompt, table, 1)
  np.testing.assert_array_equal(ids, want_ids[:, :1])
  replicated = jax.device_put(table, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  nearest.nearest_tokens(prompt, replicated, V)
  assert len(dense_calls) == 2
  for k in (0, V + 1):
    with pytest.raises(ValueError, match=rf"^k must be in \[1, V={V}\]; got "
                       rf"{k}\.$"):
      nearest.nearest_tokens(prompt, table, k)
  with pytest.raises(ValueError, match=(
      rf"^nearest_tokens needs a prompt \[P, H\] and a table \[V, H\] of the "
      rf"same H; got \({H},\) and \({V}, {H}\)\.$")):
    nearest.nearest_tokens(prompt[0], table)


def test_suffix_positions_default_eos_is_one():
  from prompt_tuning.prompts import layer  # pylint: disable=g-import-not-at-top
  tokens = np.array([[5, 2, 1, 0], [5, 6, 7, 8], [2, 1, 2, 0]], np.int32)
  got = layer.suffix_positions(tokens > 0, tokens)
  assert got.dtype == np.int32 and np.asarray(got).tolist() == [2, 4, 1]
  assert np.asarray(layer.suffix_positions(tokens > 0, tokens, 2)).tolist() == [
      1, 4, 0]
