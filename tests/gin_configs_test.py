"""Every file in gin_configs/ parses, with its required macros bound, and the
prompt-tuning defaults are the paper's recipe."""

import glob
import os

import gin
import pytest

from prompt_tuning import configurables
from prompt_tuning.models import t5_config

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "gin_configs")
REQUIRED = ["MODEL_DIR='/tmp/m'", "INITIAL_CHECKPOINT_PATH='/tmp/c'",
            "MIXTURE_OR_TASK_NAME='t'", "PROMPT_PATH='/tmp/p'",
            "EVAL_OUTPUT_DIR='/tmp/e'", "OUTPUT_PATH='/tmp/o.jsonl'",
            "PROMPT_INIT_TEXT='hello'", "PROMPT_INIT_FILE='/tmp/p.npy'",
            "WAYWARD_TEXT='hi'"]


def _files(kind):
  return sorted(os.path.relpath(p, ROOT)
                for p in glob.glob(os.path.join(ROOT, kind, "*.gin")))


def _parse(files, bindings=()):
  gin.clear_config(clear_constants=True)
  configurables.parse(files, list(REQUIRED) + list(bindings))


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config(clear_constants=True)


def _run_function(run_file):
  return {"runs/eval.gin": "evaluate", "runs/infer.gin": "infer"}.get(
      run_file, "train")


@pytest.mark.parametrize("model_file", _files("models"))
def test_every_model_file_parses(model_file):
  decoder = model_file.endswith("decoder_preset.gin")
  _parse([model_file, "runs/prompt_tune.gin"],
         ["DECODER_PRESET = 'qwen2_5_0_5b'"] if decoder else [])
  config = gin.query_parameter("MODEL_CONFIG/macro.value")
  if model_file.endswith("from_checkpoint.gin"):
    assert config is None
  elif decoder:
    assert gin.query_parameter("DECODER_PRESET/macro.value") == "qwen2_5_0_5b"
    made = configurables.decoder_model_config("qwen2_5_0_5b")
    assert (made.family, made.num_layers, made.emb_dim) == ("llama", 24, 896)
  else:
    name = os.path.basename(model_file)[:-len(".gin")]
    assert gin.query_parameter("model_config.name") == name
    t5_config(name)  # the preset exists


@pytest.mark.parametrize("run_file", _files("runs"))
@pytest.mark.parametrize("prompt_file", [None] + _files("prompts"))
def test_every_run_and_prompt_file_parses(run_file, prompt_file):
  files = ["models/t5_1_1_tiny.gin", run_file]
  fn = _run_function(run_file)
  if prompt_file and fn == "train":
    files.append(prompt_file)
  _parse(files)
  assert gin.query_parameter(f"{fn}.model_config") is not None


@pytest.mark.parametrize("method_file", _files("methods"))
def test_every_method_file_builds_its_method(method_file):
  _parse(["models/t5_1_1_tiny.gin", "runs/prompt_tune.gin", method_file])
  from prompt_tuning import methods  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import setup  # pylint: disable=g-import-not-at-top
  name = gin.query_parameter("METHOD/macro.value")
  assert name in methods.METHODS
  assert os.path.basename(method_file)[:-4] in (name, "wayward")
  with gin.config_scope(None):
    option = {"deep_prompt": methods.DeepPromptConfig,
              "prefix": methods.PrefixConfig,
              "p_tuning": methods.PTuningConfig, "ia3": methods.IA3Config,
              "multitask_prompt": methods.MultitaskPromptConfig,
              "lora": methods.LoraConfig}.get(name)
    options = {name: gin.get_configurable(option)()} if option else {}
  gamma = (gin.query_parameter("PromptConfig.wayward_gamma")
           if name == "prompt" else 0.0)
  method = setup.make_method(name, setup.PromptConfig(wayward_gamma=gamma),
                             options)
  assert method.name == name
  if name == "prompt":
    assert method.wayward_gamma == 0.01


def test_prompt_tune_defaults_are_the_papers_recipe():
  _parse(["models/t5_1_1_lm100k_base.gin", "runs/prompt_tune.gin"])
  q = gin.query_parameter
  # The rate is METHOD's default, 0.3 for prompt tuning.
  assert str(q("method_learning_rate.method")) == "%METHOD"
  assert q("METHOD/macro.value") == "prompt"
  assert configurables.method_learning_rate(q("METHOD/macro.value")) == 0.3
  assert q("AdafactorConfig.weight_decay_rate") == 1e-5
  assert q("AdafactorConfig.decay_rate") == 0.8
  assert q("AdafactorConfig.multiply_by_parameter_scale") is False
  assert q("AdafactorConfig.factored") is False
  assert q("BATCH_SIZE/macro.value") == 32
  assert q("TRAIN_STEPS/macro.value") == 30000
  assert q("PROMPT_LENGTH/macro.value") == 100
  assert q("PromptConfig.init") == "class_labels"
  assert q("train.dropout_rate") == 0.1
  assert q("TrainConfig.z_loss") == 1e-4
  assert q("TASK_FEATURE_LENGTHS/macro.value") == {"inputs": 512,
                                                   "targets": 8}
  assert q("METHOD/macro.value") == "prompt"


def test_model_tune_trains_everything():
  _parse(["models/t5_1_1_base.gin", "runs/model_tune.gin"])
  assert gin.query_parameter("METHOD/macro.value") == "model"
  assert gin.query_parameter("AdafactorConfig.learning_rate") == 1e-3


def test_unknown_binding_names_close_match():
  with pytest.raises(configurables.ConfigError,
                     match="Unknown gin configurable 'TrainConfg'.*"
                     "Did you mean TrainConfig"):
    _parse(["models/t5_1_1_tiny.gin", "runs/prompt_tune.gin"],
           ["TrainConfg.batch_size = 4"])


def test_missing_gin_file_is_a_clear_error():
  with pytest.raises(configurables.ConfigError, match="gin file not found"):
    _parse(["runs/no_such_run.gin"])


def test_rewrite_gin_args():
  assert configurables.rewrite_gin_args(
      ["prog", "--gin.TRAIN_STEPS=5", "--gin_file=x.gin"]) == [
          "prog", "--gin_bindings=TRAIN_STEPS = 5", "--gin_file=x.gin"]
