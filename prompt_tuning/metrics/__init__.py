"""Task metrics with T5's definitions, in pure Python and numpy.

seqio metric functions `fn(targets, predictions) -> {name: value}` (percent)
for the classification, correlation and QA tasks prompt tuning is evaluated
on, plus the SuperGLUE aggregate. They reproduce the T5 library's numbers
without pulling sklearn or scipy into the evaluation path. Imports numpy
only, nothing else of the package.
"""

from prompt_tuning.metrics.classification import MetricFn
from prompt_tuning.metrics.classification import accuracy
from prompt_tuning.metrics.classification import all_match
from prompt_tuning.metrics.classification import f1_score_with_invalid
from prompt_tuning.metrics.classification import invalid_rate
from prompt_tuning.metrics.classification import matthews_corrcoef
from prompt_tuning.metrics.classification import mean_group_metric
from prompt_tuning.metrics.classification import mean_multiclass_f1
from prompt_tuning.metrics.classification import multirc_f1_over_all_answers
from prompt_tuning.metrics.classification import pearson_corrcoef
from prompt_tuning.metrics.classification import spearman_corrcoef
from prompt_tuning.metrics.qa import deduplicate_metric
from prompt_tuning.metrics.qa import normalize_squad
from prompt_tuning.metrics.qa import normalize_trivia_qa
from prompt_tuning.metrics.qa import record
from prompt_tuning.metrics.qa import squad
from prompt_tuning.metrics.qa import trivia_qa
from prompt_tuning.metrics.superglue import DIAGNOSTIC_TASKS
from prompt_tuning.metrics.superglue import IGNORED_IN_SCORE
from prompt_tuning.metrics.superglue import SUPERGLUE_TASKS
from prompt_tuning.metrics.superglue import superglue_average
from prompt_tuning.metrics.superglue import superglue_task_name
from prompt_tuning.metrics.superglue import superglue_task_scores
from prompt_tuning.metrics.superglue import task_score

__all__ = [
    "DIAGNOSTIC_TASKS", "IGNORED_IN_SCORE", "MetricFn", "SUPERGLUE_TASKS", "accuracy",
    "all_match", "deduplicate_metric", "f1_score_with_invalid",
    "invalid_rate", "matthews_corrcoef", "mean_group_metric",
    "mean_multiclass_f1", "multirc_f1_over_all_answers", "normalize_squad",
    "normalize_trivia_qa", "pearson_corrcoef", "record", "spearman_corrcoef",
    "squad", "superglue_average", "superglue_task_name",
    "superglue_task_scores", "task_score", "trivia_qa",
]
