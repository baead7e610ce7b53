"""The documentation agrees with the code.

- The ``>>>`` examples of the user guide (``docs/user_guide/*.rst``) run and give the printed
  results: they check the formulas and conventions of the guide (``alpha = exp(log_alpha)``,
  ``C = 1/alpha``, the sign of the hypergradient, ``-alpha coef . q``, the criteria against
  scikit-learn's metrics) against the code.
- The examples in the docstrings of the public modules run.
- The API reference (``docs/api.rst``) lists every public name.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from test_docstrings import HAS_TORCH, TORCH_MODULES, public_modules

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDE_PAGES = sorted((DOCS / "user_guide").glob("*.rst"))
NEEDS_TORCH = {"deq.rst", "torch.rst"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_guide_pages_exist():
    names = {page.name for page in GUIDE_PAGES}
    assert {"bilevel.rst", "hypergradient.rst", "hoag.rst", "shine.rst"} <= names


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=[page.name for page in GUIDE_PAGES])
def test_user_guide_examples(page):
    if page.name in NEEDS_TORCH:
        pytest.importorskip("torch")
    failures, _ = doctest.testfile(
        str(page), module_relative=False, optionflags=FLAGS, verbose=False, report=True
    )
    assert failures == 0, f"{failures} example(s) of {page.name} failed (see the output above)"


def _modules_with_docstring_examples():
    names = ["hoag_shine", "hoag_shine.hypergradients", "hoag_shine.outer"]
    for name in public_modules():
        if name not in names:
            names.append(name)
        module = importlib.import_module(name)
        for attribute in module.__all__:
            try:
                owner = getattr(getattr(module, attribute), "__module__", None)
            except ImportError:  # a torch class of hoag_shine.backends, without torch
                continue
            if owner and owner.startswith("hoag_shine") and owner not in names:
                names.append(owner)
    return names


@pytest.mark.parametrize("module_name", _modules_with_docstring_examples())
def test_docstring_examples(module_name):
    if module_name.startswith("hoag_shine.backends.torch"):
        pytest.importorskip("torch")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, module_name, globs=vars(module).copy()):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {module_name}"


def _api_reference_names() -> set[str]:
    """Fully qualified names listed in the autosummary tables of ``docs/api.rst``."""
    names: set[str] = set()
    module = None
    in_table = False
    for line in (DOCS / "api.rst").read_text().splitlines():
        directive = re.match(r"\.\. (\S+)::\s*(\S*)", line.strip())
        if directive and not line.startswith(" "):
            kind, argument = directive.groups()
            if kind in ("currentmodule", "module"):
                module = argument
            in_table = kind == "autosummary"
            continue
        if not in_table:
            continue
        if line and not line.startswith(" "):
            in_table = False
            continue
        entry = line.strip()
        if entry and not entry.startswith(":"):
            names.add(entry if "." in entry else f"{module}.{entry}")
    return names


def test_api_reference_lists_every_public_name():
    import hoag_shine

    listed = _api_reference_names()
    text = (DOCS / "api.rst").read_text()
    missing = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if name == "__version__":
                if "__version__" not in text:
                    missing.append(f"{module_name}.{name}")
                continue
            at_top = name in hoag_shine.__all__ and getattr(hoag_shine, name, None) is getattr(
                module, name, None
            )
            if f"{module_name}.{name}" in listed or (at_top and f"hoag_shine.{name}" in listed):
                continue
            missing.append(f"{module_name}.{name}")
    assert not missing, f"not in docs/api.rst: {missing}"


def test_api_reference_lists_only_public_names():
    listed = _api_reference_names()
    public = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        public.update(f"{module_name}.{name}" for name in module.__all__)
    if not HAS_TORCH:
        listed = {name for name in listed if not name.startswith(TORCH_MODULES)}
    assert listed <= public, f"listed but not public: {sorted(listed - public)}"


sys.path.insert(0, str(DOCS / "_ext"))
from gallery_titles import gallery_title_problem  # noqa: E402

EXAMPLES = sorted((DOCS.parent / "examples").glob("*.py"))
#: Examples maintained elsewhere that sphinx-gallery cannot render yet (left out of the gallery
#: by docs/conf.py until fixed): file name -> what is wrong.
UNTITLED_EXAMPLES: dict[str, str] = {}


def _example_params():
    for example in EXAMPLES:
        marks = []
        if example.name in UNTITLED_EXAMPLES:
            marks.append(pytest.mark.xfail(strict=True, reason=UNTITLED_EXAMPLES[example.name]))
        yield pytest.param(example, id=example.name, marks=marks)


@pytest.mark.parametrize("example", list(_example_params()))
def test_example_has_a_gallery_title(example):
    """sphinx-gallery renders an example only when its docstring opens with a reST title.

    ``plot_*.py`` examples are executed by the documentation build; the others are displayed.
    """
    problem = gallery_title_problem(example)
    assert problem is None, f"{example.name}: {problem}"
