"""Text-to-text formats of the paper's tasks (tf.data maps for SeqIO).

`glue`: T5's GLUE/SuperGLUE format, STS-B, renaming, label mapping and the
taskless form; `superglue`: ReCoRD, WSC and DPR; `qa`: SQuAD and MRQA, with
T5's punctuation padding.
"""

from prompt_tuning.data.preprocessors.glue import UNKNOWN_LABEL
from prompt_tuning.data.preprocessors.glue import glue
from prompt_tuning.data.preprocessors.glue import map_labels
from prompt_tuning.data.preprocessors.glue import rekey
from prompt_tuning.data.preprocessors.glue import remove_task_word
from prompt_tuning.data.preprocessors.glue import stsb
from prompt_tuning.data.preprocessors.qa import mrqa
from prompt_tuning.data.preprocessors.qa import pad_punctuation
from prompt_tuning.data.preprocessors.qa import squad
from prompt_tuning.data.preprocessors.superglue import dpr_simple
from prompt_tuning.data.preprocessors.superglue import record
from prompt_tuning.data.preprocessors.superglue import wsc_simple

__all__ = ["UNKNOWN_LABEL", "dpr_simple", "glue", "map_labels", "mrqa",
           "pad_punctuation", "record", "rekey", "remove_task_word", "squad",
           "stsb", "wsc_simple"]
