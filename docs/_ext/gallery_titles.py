"""Which examples sphinx-gallery can render: their docstring must open with a reST title.

Shared by ``docs/conf.py`` (an example without a title is left out of the gallery rather than
breaking the build) and ``tests/test_docs.py`` (which fails for it, so it does not go unnoticed).
"""

from __future__ import annotations

import ast
from pathlib import Path


def gallery_title_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a gallery example, or None when it can.

    The docstring must start with a title line underlined by ``=`` (at least as long), e.g.::

        \"\"\"
        Training an MDEQ on Fashion-MNIST
        =================================

        What the example shows.
        \"\"\"
    """
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=True)
    if not docstring:
        return "no module docstring"
    lines = docstring.splitlines()
    if (
        len(lines) >= 2
        and lines[0].strip()
        and set(lines[1].strip()) == {"="}
        and len(lines[1].strip()) >= len(lines[0].strip())
    ):
        return None
    return f"the docstring must open with a title underlined by '=', got {lines[:2]}"


def untitled_examples(folder: Path) -> list[str]:
    """File names of the examples in ``folder`` that sphinx-gallery cannot render."""
    return sorted(p.name for p in folder.glob("*.py") if gallery_title_problem(p) is not None)
