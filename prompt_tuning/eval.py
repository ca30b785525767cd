"""`python -m prompt_tuning.eval --gin_file=runs/eval.gin --gin.MODEL_DIR=...`.

A thin entry point: flags and gin are handled by `prompt_tuning.cli`, the
work by the gin-configured `evaluate(...)`. Console script: `prompt-tuning-eval`.
"""

from prompt_tuning import cli


def main() -> None:
  cli.run("evaluate")


if __name__ == "__main__":
  main()
