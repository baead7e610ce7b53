"""Every public function and class has a numpydoc docstring whose parameters match its signature.

Public means: a name in ``hoag_shine.__all__`` or in the ``__all__`` of a public submodule
(:data:`PUBLIC_MODULES`), and the public methods and properties of those classes that are defined
in ``hoag_shine`` (methods inherited from scikit-learn, torch or ``object`` are not ours).

A method without a docstring inherits the one of the method it overrides (as ``help()`` and the
API reference show it). A function's or method's ``Parameters`` section must list exactly the
parameters of its signature, in order (``self``/``cls`` excluded; ``*args`` and ``**kwargs`` may
be written with or without their stars; combined entries such as ``rtol, atol : float`` count for
each name). A class is checked against the signature of its constructor; a dataclass without a
``Parameters`` section may document its fields under ``Attributes`` instead (the result objects
do). Data (tuples, dicts, strings) need no docstring here: the API reference documents them from
their ``#:`` comments.

The docstrings are parsed with numpydoc (the ``docs`` extra); without it these checks are
skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import warnings

import pytest

#: Modules whose ``__all__`` is public API.
PUBLIC_MODULES = (
    "hoag_shine",
    "hoag_shine.problems",
    "hoag_shine.criteria",
    "hoag_shine.solvers",
    "hoag_shine.estimator",
    "hoag_shine.plotting",
    "hoag_shine.datasets",
    "hoag_shine.comparison",
    "hoag_shine.cli",
    "hoag_shine.deq",
    "hoag_shine.deq.configs",
    "hoag_shine.backends",
)

HAS_TORCH = importlib.util.find_spec("torch") is not None
#: Modules that cannot be imported without torch (an optional dependency).
TORCH_MODULES = ("hoag_shine.deq", "hoag_shine.deq.configs")


def public_modules() -> list[str]:
    """:data:`PUBLIC_MODULES`, without the torch-only ones when torch is not installed."""
    return [name for name in PUBLIC_MODULES if HAS_TORCH or name not in TORCH_MODULES]


#: Known problems in modules maintained elsewhere: qualified name -> what is wrong. Each is an
#: expected failure (strict: the test fails once it is fixed, so the entry must be removed).
KNOWN_PROBLEMS: dict[str, str] = {}


def _public_objects():
    """``{qualified name: object}`` of the public functions, classes, methods and properties."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            try:
                obj = getattr(module, name)
            except ImportError:  # a torch class of hoag_shine.backends, without torch
                if HAS_TORCH:
                    raise
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            qualified = f"{module_name}.{name}"
            found[qualified] = obj
            if inspect.isclass(obj):
                for member_name, member in _public_members(obj).items():
                    if id(member) not in seen:  # inherited: checked with the first class
                        seen.add(id(member))
                        found[f"{qualified}.{member_name}"] = member
    return found


def _public_members(cls) -> dict[str, object]:
    """Public methods and properties of ``cls`` defined in ``hoag_shine`` (bases included)."""
    members = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("hoag_shine"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            if name in members:
                continue  # overridden in a subclass, checked there
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if isinstance(member, property) or inspect.isfunction(member):
                members[name] = member
    return members


def _signature_parameters(obj) -> list[str]:
    """Parameter names of a function or of a class's constructor, ``self`` and ``cls`` dropped."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    names = list(signature.parameters)
    if not inspect.isclass(obj) and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def _documented(doc, section: str) -> list[str]:
    """Names documented in a section of a parsed ``NumpyDocString``."""
    names = []
    for parameter in doc[section]:
        for name in parameter.name.split(","):
            name = name.strip().lstrip("*")
            if name:
                names.append(name)
    return names


def _is_generated_dataclass_doc(obj) -> bool:
    """A dataclass without a docstring gets ``Name(field: type, ...)`` from ``dataclasses``."""
    return (
        inspect.isclass(obj)
        and dataclasses.is_dataclass(obj)
        and (obj.__doc__ or "").startswith(f"{obj.__name__}(")
    )


def docstring_problems(obj) -> list[str]:
    """What is wrong with the docstring of ``obj`` (empty when nothing is)."""
    if isinstance(obj, property):
        raw = obj.fget.__doc__
    elif inspect.isfunction(obj):
        raw = inspect.getdoc(obj)  # a method overriding a documented one inherits its docstring
    else:
        raw = obj.__doc__
    if not raw or not raw.strip() or _is_generated_dataclass_doc(obj):
        return ["no docstring"]
    # numpydoc is in the docs extra (CI runs this file again after installing it).
    NumpyDocString = pytest.importorskip("numpydoc.docscrape").NumpyDocString
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            doc = NumpyDocString(inspect.cleandoc(raw))
        except Exception as error:  # numpydoc raises or warns on malformed sections
            return [f"docstring does not parse as numpydoc: {error}"]
    if isinstance(obj, property):
        return []

    expected = [name.lstrip("*") for name in _signature_parameters(obj)]
    documented = _documented(doc, "Parameters")
    where = "Parameters"
    if not documented and inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        attributes = _documented(doc, "Attributes")
        documented = [name for name in attributes if name in expected]
        where = "Attributes"
    problems = []
    missing = [name for name in expected if name not in documented]
    extra = [name for name in documented if name not in expected]
    if missing:
        problems.append(f"parameters not documented in {where}: {', '.join(missing)}")
    if extra:
        problems.append(f"documented in {where} but not in the signature: {', '.join(extra)}")
    duplicated = sorted({name for name in documented if documented.count(name) > 1})
    if duplicated:
        problems.append(f"documented twice: {', '.join(duplicated)}")
    if not missing and not extra and not duplicated and documented != expected:
        problems.append(f"{where} order {documented} differs from the signature's {expected}")
    return problems


PUBLIC_OBJECTS = _public_objects()


def _params():
    for name, obj in sorted(PUBLIC_OBJECTS.items()):
        marks = []
        if name in KNOWN_PROBLEMS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_PROBLEMS[name]))
        yield pytest.param(name, obj, id=name, marks=marks)


@pytest.mark.parametrize(("name", "obj"), list(_params()))
def test_docstring(name, obj):
    problems = docstring_problems(obj)
    assert not problems, f"{name}: " + "; ".join(problems)


def test_known_problems_are_public():
    """Entries of KNOWN_PROBLEMS name public objects (a rename must not hide a check)."""
    assert set(KNOWN_PROBLEMS) <= set(PUBLIC_OBJECTS)


def test_every_module_has_public_names():
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        assert module.__all__, module_name
        assert module.__doc__, f"{module_name} has no module docstring"
