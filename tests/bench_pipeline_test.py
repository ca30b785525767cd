"""The input-pipeline benchmark runs and reports a sane rate."""

import json

import pytest

from prompt_tuning.bench import pipeline


def test_pipeline_benchmark_reports_one_json_line(capsys):
  assert pipeline.main(["--batch", "4", "--inputs", "64", "--batches", "3",
                        "--warmup", "1", "--examples", "40",
                        "--step_time", "0.5"]) == 0
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert record["what"] == "input_pipeline"
  assert record["batches_per_s"] > 0
  assert record["examples_per_s"] == pytest_approx(record["batches_per_s"] * 4)
  # Every input is the BoolQ format trimmed to 64 tokens.
  assert record["mean_real_input_tokens"] == 64
  assert record["ratio_to_step_rate"] == pytest_approx(
      record["batches_per_s"] * 0.5)


def pytest_approx(value):
  # The record rounds to 2 (batches) and 1 (examples) decimals.
  return pytest.approx(value, rel=0.02, abs=0.1)
