"""`python -m prompt_tuning.data prepare TASK...`: prepare the tasks' TFDS data.

`list TASK...` prints what they read and whether it is prepared. The work is
in `prompt_tuning.data.prepare`; this file only quiets TensorFlow first.
"""

import os
import sys

# TensorFlow's C++ log level must be set before it is imported: its CUDA
# probing lines would bury the one-line progress and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prompt_tuning.data import prepare  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  sys.exit(prepare.main())
