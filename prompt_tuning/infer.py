"""`python -m prompt_tuning.infer --gin_file=runs/infer.gin --gin.MODEL_DIR=...`.

A thin entry point: flags and gin are handled by `prompt_tuning.cli`, the
work by the gin-configured `infer(...)`. Console script: `prompt-tuning-infer`.
"""

from prompt_tuning import cli


def main() -> None:
  cli.run("infer")


if __name__ == "__main__":
  main()
