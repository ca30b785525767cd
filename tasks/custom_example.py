"""An example of registering your own task from local files.

`custom_example_sentiment`: movie-review sentiment from the two small TSV
files in `custom_example_data/` (columns `review`, `label` with values
pos/neg), shown to the model as 'review: <text>' -> 'positive' / 'negative'
(no task word: the prompt tells the frozen model what to do). Copy this
module, point it at your files, and pass it to a run with
`--task_module=<your module>` (see README, "Your own task").
"""

import os

from prompt_tuning.data import custom_tasks

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "custom_example_data")
TASK = "custom_example_sentiment"

custom_tasks.register_from_files(
    TASK,
    {"train": os.path.join(DATA_DIR, "train.tsv"),
     "validation": os.path.join(DATA_DIR, "validation.tsv")},
    text_fields=("review",),
    label_field="label",
    label_words={"neg": "negative", "pos": "positive"},
    metric_names=("accuracy", "f1"))
