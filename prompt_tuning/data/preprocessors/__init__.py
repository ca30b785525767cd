"""Text-to-text formats of the paper's tasks (tf.data maps for SeqIO).

`glue`: T5's GLUE/SuperGLUE format, STS-B, renaming, label mapping and the
taskless form; `superglue`: ReCoRD and WSC; `qa`: MRQA/SQuAD.
"""

from prompt_tuning.data.preprocessors.glue import UNKNOWN_LABEL
from prompt_tuning.data.preprocessors.glue import glue
from prompt_tuning.data.preprocessors.glue import map_labels
from prompt_tuning.data.preprocessors.glue import rekey
from prompt_tuning.data.preprocessors.glue import remove_task_word
from prompt_tuning.data.preprocessors.glue import stsb
from prompt_tuning.data.preprocessors.qa import mrqa
from prompt_tuning.data.preprocessors.superglue import record
from prompt_tuning.data.preprocessors.superglue import wsc_simple

__all__ = ["UNKNOWN_LABEL", "glue", "map_labels", "mrqa", "record", "rekey",
           "remove_task_word", "stsb", "wsc_simple"]
