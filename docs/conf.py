"""Sphinx configuration of the documentation site (docs/).

Sphinx with MyST, as the JAX libraries' sites are built: the pages stay
Markdown. The site's front page is the repository's README (included by
index.md), so the README a newcomer reads on GitHub and the site's landing
page are one text.

Build it as CI does (tests/docs_test.py), warnings as errors and every
reference checked:

    sphinx-build -W --keep-going -n -b html docs /tmp/prompt_tuning_docs

Nothing here reaches the network: no intersphinx inventories, no external
link check.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

project = "prompt-tuning"
author = "prompt-tuning authors"
copyright = "2026, prompt-tuning authors"  # pylint: disable=redefined-builtin

extensions = ["myst_parser"]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# `[text](page.md#a-heading)` links resolve to heading anchors down to `###`;
# a link to a page or anchor that does not exist is a warning, and the CI
# build turns every warning into a failure.
myst_heading_anchors = 3

# GitHub's anchors (docs/anchors.py), so links also work on GitHub.
myst_heading_slug_func = "anchors.github_slug"
myst_enable_extensions = ["colon_fence"]
# Every cross-reference must resolve (sphinx-build -n makes this strict too).
nitpicky = True

# Links to addresses outside the site are not fetched or checked (no
# network in CI); `[x](https://...)` stays a plain link.
intersphinx_mapping = {}

html_theme = "sphinx_book_theme"
html_title = "prompt-tuning"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
# No "last updated" stamps or copied sources: the build is reproducible.
html_last_updated_fmt = None
html_copy_source = False
