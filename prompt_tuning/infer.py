"""`python -m prompt_tuning.infer --gin_file=runs/infer.gin --gin.MODEL_DIR=...`.

A thin entry point: flags and gin are handled by `prompt_tuning.cli`, the
work by the gin-configured `infer(...)`. Console script: `prompt-tuning-infer`.

`python -m prompt_tuning.infer --mixed --checkpoint ... --prompt NAME=PATH ...
--input rows.jsonl --output out.jsonl` is mixed-prompt inference instead:
each row names its prompt (or task), rows that name different prompts share
batches through one frozen model. It takes the flags of
`python -m prompt_tuning.prompt_tools infer` (see its `--help`), no gin.
"""

import sys
from typing import Optional, Sequence

from prompt_tuning import cli
from prompt_tuning import prompt_tools


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  if args[:1] == ["--mixed"]:
    return prompt_tools.main(["infer", *args[1:]])
  cli.run("infer")
  return 0


if __name__ == "__main__":
  sys.exit(main())
