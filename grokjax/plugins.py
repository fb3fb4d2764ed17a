"""Names -> callables: the one place that resolves what a sweep file names.

A sweep names five kinds of plug-in, each a plain callable:

- task: ``fn(**settings) -> grokjax.Task``
- model: ``fn(n_symbols, n_classes, **settings) -> flax.linen.Module`` mapping inputs ``[B, k]``
  to outputs ``[B, n_classes]`` (``dtype`` and ``param_dtype`` keywords, if it takes them, come
  from ``train.precision``)
- loss: ``fn(outputs, labels) -> [B]`` per-example losses
- optimizer: ``fn(learning_rate, **settings) -> optax.GradientTransformation``
- measure: ``fn(params, apply, task, batch) -> {column: scalar}`` (``grokjax.measures``)

A name is a registered name (the built-ins are registered exactly as ``register`` registers a
user's), an import path ``package.module:attribute``, or, for optimizers, any optax factory
(``lion``, ``adam``, ...). The section's other keys are the callable's keyword arguments,
validated against its signature. A factory signals bad settings by raising ``ValueError``; the
message reaches the user as is, with the section and name in front.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import optax

from grokjax.errors import SweepError
from grokjax.losses import BUILTIN_LOSSES
from grokjax.measures import BUILTIN_MEASURES
from grokjax.models import BUILTIN_MODELS
from grokjax.optim import BUILTIN_OPTIMIZERS
from grokjax.tasks import BUILTIN_TASKS, Task

KINDS = ("task", "model", "loss", "optimizer", "measure")
# Positional arguments of each contract: the engine passes them, a sweep file never sets them.
CONTRACT_ARGS = {"task": (), "model": ("n_symbols", "n_classes", "dtype", "param_dtype"),
                 "loss": ("outputs", "labels"), "optimizer": ("learning_rate",),
                 "measure": ("params", "apply", "task", "batch")}
# the sweep setting that names each kind of plug-in, for messages
SETTING_OF = {"task": "task.name", "model": "model.name", "loss": "train.loss", "optimizer": "optimizer.name",
              "measure": "train.measures"}

_REGISTRY: dict[str, dict[str, Callable]] = {
    "task": dict(BUILTIN_TASKS), "model": dict(BUILTIN_MODELS), "loss": dict(BUILTIN_LOSSES),
    "optimizer": dict(BUILTIN_OPTIMIZERS), "measure": dict(BUILTIN_MEASURES)}
BUILTINS: dict[str, tuple[str, ...]] = {kind: tuple(names) for kind, names in _REGISTRY.items()}


def register(kind: str, name: str, fn: Callable) -> str:
    """Make ``fn`` available to sweeps as ``name`` (``[task] name = "<name>"``), from Python,
    without an import path. Returns the name."""
    if kind not in KINDS:
        raise SweepError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not callable(fn):
        raise SweepError(f"register({kind!r}, {name!r}, ...): {fn!r} is not callable")
    if name in BUILTINS[kind] and _REGISTRY[kind][name] is not fn:
        raise SweepError(f"'{name}' is a built-in {kind}; register yours under another name")
    _REGISTRY[kind][name] = fn
    resolve.cache_clear()
    return name


def register_task(name: str, fn: Callable[..., Task]) -> str:
    return register("task", name, fn)


def register_model(name: str, fn: Callable) -> str:
    return register("model", name, fn)


def register_loss(name: str, fn: Callable) -> str:
    return register("loss", name, fn)


def register_optimizer(name: str, fn: Callable) -> str:
    return register("optimizer", name, fn)


def name_of(kind: str, value) -> str:
    """A sweep's ``name`` as a string: a callable given from Python is registered under its import
    path (``module:qualname``), so results and checkpoints can name it."""
    if isinstance(value, str):
        return value
    if callable(value):
        return register(kind, f"{value.__module__}:{value.__qualname__}", value)
    raise SweepError(f"{SETTING_OF[kind]} must be a name (string) or a callable, got {value!r}")


@functools.cache
def resolve(kind: str, name: str) -> Callable:
    """The callable a sweep names; ``SweepError`` naming the setting if there is none."""
    where = SETTING_OF[kind]
    if name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - any failure to import is the user's to see
            raise SweepError(f"{where} = {name!r}: cannot import module '{module_name}' "
                             f"({type(e).__name__}: {e}); is it on the Python path?") from None
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part, None)
        if fn is None:
            raise SweepError(f"{where} = {name!r}: module '{module_name}' has no attribute '{attr}'")
        if not callable(fn):
            raise SweepError(f"{where} = {name!r} is not callable (a {type(fn).__name__}); expected {_contract(kind)}")
        _check_contract(kind, name, fn)
        return fn
    if kind == "optimizer" and callable(getattr(optax, name, None)) and "learning_rate" in parameters_of(
            getattr(optax, name)):
        return getattr(optax, name)
    known = list(_REGISTRY[kind])
    if kind == "optimizer":
        known += optax_optimizers()
    hint = f" (did you mean '{close[0]}'?)" if (close := difflib.get_close_matches(name, known, 1, 0.5)) else ""
    extra = "; or any optax optimizer (adam, lion, ...)" if kind == "optimizer" else ""
    raise SweepError(f"{where} = {name!r} is not a known {kind}{hint}; built-in: {', '.join(_REGISTRY[kind])}"
                     f"{extra}; or an import path package.module:attribute")


def _check_contract(kind: str, name: str, fn: Callable) -> None:
    """The call signature a kind of plug-in must accept (what a signature can tell)."""
    try:
        params = dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return  # a builtin or C callable: no signature to read
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params.values())
    if kind == "optimizer" and "learning_rate" not in params and not takes_any_keyword(fn):
        problem = "takes no learning_rate"
    elif kind in ("model", "loss") and len(positional) < 2 and not varargs:
        problem = f"takes {len(positional)} positional argument{'s' if len(positional) != 1 else ''}, not 2"
    elif kind == "measure" and len(positional) < 4 and not varargs:
        problem = f"takes {len(positional)} positional argument{'s' if len(positional) != 1 else ''}, not 4"
    else:
        return
    raise SweepError(f"{SETTING_OF[kind]} = {name!r} {problem}; expected {_contract(kind)}")


def optax_optimizers() -> list[str]:
    """optax's public factories that take a learning rate."""
    return sorted(n for n in dir(optax) if not n.startswith("_") and inspect.isfunction(getattr(optax, n))
                  and "learning_rate" in parameters_of(getattr(optax, n)))


def plugin_doc(kind: str, name: str) -> str:
    """The first line of a plug-in's docstring (what ``grokjax info`` shows)."""
    doc = inspect.getdoc(resolve(kind, name)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"


def _contract(kind: str) -> str:
    return {"task": "fn(**settings) -> grokjax.Task",
            "model": "fn(n_symbols, n_classes, **settings) -> flax.linen.Module",
            "loss": "fn(outputs, labels) -> per-example losses [B]",
            "optimizer": "fn(learning_rate, **settings) -> optax.GradientTransformation",
            "measure": "fn(params, apply, task, batch) -> dict of column name -> scalar"}[kind]


def parameters_of(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def settings_of(kind: str, fn: Callable) -> dict[str, inspect.Parameter]:
    """The keyword settings a plug-in takes: its signature less the contract's own arguments (a
    model's or loss's first two, whatever their names; an optimizer's learning_rate)."""
    params = {k: p for k, p in parameters_of(fn).items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if kind in ("model", "loss"):
        for key in [k for k, p in params.items() if p.kind != p.KEYWORD_ONLY][:2]:
            params.pop(key)
    return {k: p for k, p in params.items() if k not in CONTRACT_ARGS[kind]}


def takes_any_keyword(fn: Callable) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in parameters_of(fn).values())


def scalar_defaults(kind: str, fn: Callable) -> dict[str, Any]:
    """Defaults of a plug-in's settings that a results table can hold (numbers, strings, bools)."""
    return {k: p.default for k, p in settings_of(kind, fn).items()
            if isinstance(p.default, (bool, int, float, str))}


def check_settings(kind: str, name: str, fn: Callable, settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate ``settings`` against ``fn``'s signature; returns them converted (ints to floats
    where the parameter is a float, lists to tuples). ``where`` names the section for messages."""
    params = settings_of(kind, fn)
    out = {}
    for key, value in settings.items():
        if key not in params and not takes_any_keyword(fn):
            allowed = list(params)
            close = difflib.get_close_matches(key, allowed, 1, 0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SweepError(f"unknown key {key!r} in {where}: {kind} '{name}' does not take it{hint}; "
                             f"it takes: {', '.join(allowed) or 'no settings'}")
        out[key] = convert_setting(f"{where.strip('[]')}.{key}", params.get(key), value)
    missing = [k for k, p in params.items() if p.default is p.empty and k not in out]
    if missing:
        raise SweepError(f"{where}: {kind} '{name}' needs the setting{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)}")
    return out


def convert_number(where: str, kind: str, value):
    """A setting's number: ``kind`` "int" (an integral float is taken) or "float" (finite).

    Raises:
      SweepError: naming ``where``, for a value that is not such a number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where} must be a number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise SweepError(f"{where} must be an integer, got {value!r}")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise SweepError(f"{where} must be finite, got {value!r}")
    return value


def convert_setting(where: str, param: inspect.Parameter | None, value):
    """One plug-in setting, typed by its parameter's default (or annotation when the default is
    None): booleans stay booleans, integers stay integers, floats become floats."""
    default = param.default if param is not None and param.default is not param.empty else None
    annotation = str(param.annotation) if param is not None else ""
    if isinstance(value, list):
        return tuple(convert_setting(where, None, v) for v in value)
    if not isinstance(value, (bool, int, float, str)):
        raise SweepError(f"{where} must be a number, string, boolean or a list of them, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SweepError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) or (default is None and "float" in annotation):
        integer = isinstance(default, int) and not isinstance(default, bool) and "float" not in annotation
        return convert_number(where, "int" if integer else "float", value)
    if isinstance(default, str) and not isinstance(value, str):
        raise SweepError(f"{where} must be a string, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"{where} must be finite, got {value!r}")
    return value


def call_factory(kind: str, name: str, fn: Callable, *args, **settings):
    """Call a plug-in factory; its ``ValueError`` (bad settings) or any other exception becomes a
    ``SweepError`` naming the section and the plug-in, as does a result of the wrong kind."""
    try:
        out = fn(*args, **settings)
    except SweepError:
        raise
    except ValueError as e:
        raise SweepError(f"{SETTING_OF[kind]} = {name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's factory: report it, do not crash
        raise SweepError(f"{SETTING_OF[kind]} = {name!r} raised {type(e).__name__}: {e}") from None
    expected = {"model": ("init", "apply"), "optimizer": ("init", "update")}.get(kind, ())
    if not all(hasattr(out, attr) for attr in expected):
        raise SweepError(f"{SETTING_OF[kind]} = {name!r} returned {type(out).__name__}; expected {_contract(kind)}")
    return out


@functools.lru_cache(maxsize=64)
def build_task(name: str, settings: tuple[tuple[str, Any], ...]) -> Task:
    """The table of a task (cached: every group and every check of a sweep shares it)."""
    task = call_factory("task", name, resolve("task", name), **dict(settings))
    if not isinstance(task, Task):
        raise SweepError(f"task.name = {name!r} returned {type(task).__name__}, expected a grokjax.Task "
                         f"(name, inputs, labels, n_symbols)")
    return task
