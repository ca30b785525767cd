"""Heading anchors for the documentation site (docs/conf.py uses this).

A module of its own, not a function in conf.py: Sphinx pickles its
configuration between builds, and a function defined in conf.py cannot be
pickled.
"""

import re


def github_slug(title: str) -> str:
  """A heading's anchor as GitHub makes it, so that `page.md#anchor` links
  work both on this site and when the Markdown is read on GitHub."""
  return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
