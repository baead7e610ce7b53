"""Sphinx configuration of the hoag_shine documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (what ``.ci/run`` does).
Nothing is fetched from the network: no intersphinx, the gallery runs on scikit-learn's bundled
data, and the benchmark pages are rendered from the committed JSON in ``benchmarks/results/``.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

from gallery_titles import untitled_examples  # noqa: E402
from sphinx.errors import PycodeError  # noqa: E402
from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import hoag_shine  # noqa: E402

# -- project -------------------------------------------------------------------------------------
project = "hoag_shine"
author = "the hoag_shine developers"
copyright = "the hoag_shine developers, BSD-3-Clause"
release = hoag_shine.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "benchmark_pages",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb"]
root_doc = "index"
default_role = "literal"
nitpicky = False

# -- API reference -------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters sections are the documentation
autodoc_member_order = "bysource"
autodoc_default_options = {
    # Members inherited from scikit-learn, torch and object are documented there, not here.
    "inherited-members": "MetaEstimatorMixin, BaseEstimator, Module, Function, object",
}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False


def _skip_member(app, what, name, obj, skip, options):
    """Skip scikit-learn's metadata-routing methods (``set_fit_request``, ...): not ours."""
    if name == "get_metadata_routing" or (name.startswith("set_") and name.endswith("_request")):
        return True
    return None


# -- gallery ---------------------------------------------------------------------------------------
# ``examples/plot_*.py`` are executed at every build: they must run offline in seconds (bundled
# scikit-learn data). Any other example (large data, GPU, long training) is rendered without
# being executed; its text can include a committed figure (``.. image::``).
# An example whose docstring does not open with a reST title cannot be rendered: it is left
# out of the gallery (tests/test_docs.py fails for it, so it does not go unnoticed).
# (sphinx-gallery matches ``ignore_pattern`` against the file name or against the path,
# depending on the version: these patterns work with both.)
_IGNORED = [r"__init__\.py", r"(^|[\\/])_[^\\/]*\.py$"] + [
    r"(^|[\\/])" + re.escape(name) + "$" for name in untitled_examples(ROOT / "examples")
]
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"[\\/]plot_[^\\/]*\.py$",
    "ignore_pattern": "|".join(_IGNORED),
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("hoag_shine",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"hoag_shine": None},
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "show_memory": False,
    "min_reported_time": 1,
}

os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Gradient-based hyperparameter optimization: HOAG, SHINE, OPA",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_title = f"hoag_shine {release}"


def _data_docstring(app, what, name, obj, options, lines):
    """Document a re-exported constant by the ``#:`` comment where it is defined.

    autodoc reads ``#:`` comments from the module it documents, so a constant that a package
    re-exports (``hoag_shine.METHODS``, defined in ``hoag_shine.hypergradients``) would get the
    docstring of its type (``tuple``). Look for the defining module instead; without a comment
    there, show the value alone.
    """
    if what != "data":
        return
    attribute = name.rsplit(".", 1)[-1]
    for module_name in sorted(sys.modules):
        module = sys.modules[module_name]
        if not module_name.startswith("hoag_shine") or getattr(module, attribute, None) is not obj:
            continue
        try:
            comments = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except PycodeError:
            continue
        if ("", attribute) in comments:
            lines[:] = [line for line in comments[("", attribute)] if line is not None]
            return
    builtin = inspect.cleandoc(type(obj).__doc__ or "")
    if "\n".join(lines).strip() == builtin.strip():
        lines[:] = []


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _data_docstring)
