"""Sweep files: parsing, grid expansion, run names, and their errors."""

import os
import textwrap

import pytest

from prompt_tuning.experiments import sweeps

BASE = """
[sweep]
name = "demo"
gin_files = ["runs/prompt_tune.gin"]
bindings = ["TRAIN_STEPS = 10"]
tasks = ["task_a", "task_b"]
seeds = [0, 1]

[axes.model]
default = "base"
values.small = { gin_files = ["models/small.gin"], bindings = ["X = 1"] }
values.base = { gin_files = ["models/base.gin"] }

[axes.length]
binding = "PROMPT_LENGTH"
values = [1, 20]
default = 20

[axes.init]
binding = "PromptConfig.init"
values = ["random_uniform", "class_labels"]
default = "class_labels"

[studies.size]
vary = { model = "all" }
lines = "length"

[studies.length]
vary = { length = "all", model = ["base"] }
x = "length"
"""


def _write(tmp_path, text, name="demo.toml"):
  path = os.path.join(tmp_path, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(textwrap.dedent(text))
  return path


def test_expansion_names_and_shared_runs(tmp_path):
  sweep = sweeps.load(_write(tmp_path, BASE))
  runs = sweeps.expand(sweep)
  names = [r.name for r in runs]
  # size: 2 models x 2 tasks x 2 seeds = 8; length adds length-1 on base
  # (2 tasks x 2 seeds); base/length-20 is shared, not repeated.
  assert len(names) == 12 and len(set(names)) == 12
  assert names[0] == ("model-small__length-20__init-class_labels__"
                      "task-task_a__seed-0")
  assert names == [r.name for r in sweeps.expand(sweeps.load(
      _write(tmp_path, BASE, "again.toml")))]
  shared = next(r for r in runs if r.name == (
      "model-base__length-20__init-class_labels__task-task_b__seed-1"))
  assert shared.studies == ("size", "length")
  assert shared.gin_files == ("runs/prompt_tune.gin", "models/base.gin")
  assert shared.bindings == (
      "TRAIN_STEPS = 10", "PROMPT_LENGTH = 20",
      "PromptConfig.init = 'class_labels'",
      "MIXTURE_OR_TASK_NAME = 'task_b'",
      "TrainConfig.best_metric = 'task_b/score'", "TrainConfig.seed = 1")
  small = next(r for r in runs if r.point["model"] == "small")
  assert small.gin_files == ("runs/prompt_tune.gin", "models/small.gin")
  assert "X = 1" in small.bindings
  only_length = [r for r in runs if r.studies == ("length",)]
  assert {r.point["length"] for r in only_length} == {"1"}


def test_names_are_unique_over_the_full_grid(tmp_path):
  text = BASE.split("[studies.size]")[0]  # no studies: the whole product
  runs = sweeps.expand(sweeps.load(_write(tmp_path, text)))
  assert len(runs) == 2 * 2 * 2 * 2 * 2
  assert len({r.name for r in runs}) == len(runs)
  assert all(r.studies == ("demo",) for r in runs)


def test_train_args_and_best_metric_table(tmp_path):
  text = BASE.replace('seeds = [0, 1]', 'seeds = [3]\nbest_metric = '
                      '{ task_a = "task_a/accuracy", task_b = "x/f1" }')
  sweep = sweeps.load(_write(tmp_path, text))
  run = sweeps.expand(sweep)[0]
  assert run.best_metric == "task_a/accuracy"
  args = sweeps.train_args(run, "/r", ["my.tasks"])
  assert args[:2] == ["--gin_file=runs/prompt_tune.gin",
                      "--gin_file=models/small.gin"]
  assert "--task_module=my.tasks" in args
  assert "--gin_bindings=TrainConfig.seed = 3" in args
  assert args[-1] == f"--gin_bindings=MODEL_DIR = '/r/{run.name}'"


def test_environment_variables(tmp_path, monkeypatch):
  text = BASE.replace('bindings = ["X = 1"]', 'bindings = ["P = \'${CKPT}\'"]')
  path = _write(tmp_path, text)
  monkeypatch.delenv("CKPT", raising=False)
  with pytest.raises(sweeps.SweepError, match=r"\$\{CKPT\} is not set"):
    sweeps.load(path)
  monkeypatch.setenv("CKPT", "/ckpt/dir")
  run = sweeps.expand(sweeps.load(path))[0]
  assert "P = '/ckpt/dir'" in run.bindings


@pytest.mark.parametrize("old,new,message", [
    ('name = "demo"', 'name = "de mo"', "sweep name 'de mo'"),
    ('tasks = ["task_a", "task_b"]', "tasks = []", "at least one task"),
    ("seeds = [0, 1]", "seeds = [0, 0]", "distinct integers"),
    ("default = 20", "default = 7", "default '7' is not one of"),
    ('values = [1, 20]', 'values = [1, 1]', "duplicate value"),
    ('values = [1, 20]', 'values = [1, [2]]', "is not a number"),
    ('vary = { model = "all" }', 'vary = { modle = "all" }',
     "vary names axis 'modle'"),
    ('model = ["base"]', 'model = ["huge"]', "has no value(s) ['huge']"),
    ('lines = "length"', 'lines = "size"', "lines='size' is not an axis"),
    ('x = "length"', 'x = "steps"', "x='steps' must be"),
    ("[axes.init]", "[axes.seed]", "'seed' is built in"),
    ('binding = "PromptConfig.init"', 'bindin = "PromptConfig.init"',
     "unknown key"),
    ("[sweep]", "[sweeps]", "unknown section"),
    ('tasks = ["task_a", "task_b"]', 'tasks = "task_a"', "list of strings"),
    ("[studies.size]", "[studies.size]\npaper = 'fig9'", "known overlays"),
    ('name = "demo"', 'name = "demo', "not valid TOML"),
])
def test_errors_name_the_field(tmp_path, old, new, message):
  assert old in BASE
  path = _write(tmp_path, BASE.replace(old, new, 1))
  with pytest.raises(sweeps.SweepError) as error:
    sweeps.load(path)
  assert message in str(error.value) and path in str(error.value)
  assert "\n" not in str(error.value).strip() or "TOML" in message


def test_missing_file(tmp_path):
  with pytest.raises(sweeps.SweepError, match="cannot read"):
    sweeps.load(os.path.join(tmp_path, "nope.toml"))
