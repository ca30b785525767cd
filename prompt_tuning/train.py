"""`python -m prompt_tuning.train --gin_file=runs/prompt_tune.gin --gin.MODEL_DIR=...`.

A thin entry point: flags and gin are handled by `prompt_tuning.cli`, the
work by the gin-configured `train(...)`. Console script: `prompt-tuning-train`.
"""

from prompt_tuning import cli


def main() -> None:
  cli.run("train")


if __name__ == "__main__":
  main()
