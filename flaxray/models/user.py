"""A user's own model, by file or as a Python object: a Keras 3 model or a Flax NNX module.

    --arch models/mine.py:pyramid          # NAME in FILE.py: a function returning a keras.Model, or an NNX factory
    Study(archs=(pyramid, "final"))         # a builder, an NNX factory or a keras.Model instance (`models.name_of`)

`FILE.py:NAME` is itself the arch's name (in group names, folders and records), so a study trained on
it is resumed, replayed and loaded from it again. What NAME is decides the kind:

- a Flax NNX factory (an `nnx.Module` class, or a callable taking `rngs`): the contract of
  `flaxray.models.registry`;
- a keras.Model instance (functional or Sequential; cloned for each seed, compiled as it is);
- any other callable: a Keras builder, a function of no arguments returning a keras.Model
  (`flaxray.models.keras_kind`; checked when it is built).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Callable

from flaxray.errors import FlaxrayError

ROUTE = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
KERAS, NNX = "keras", "nnx"
_LOADED: dict[tuple, object] = {}
_BUILDERS: dict[int, Callable] = {}  # a keras.Model instance's cloning builder, one per instance


def is_route(arch) -> bool:
    return isinstance(arch, str) and ROUTE.match(arch) is not None


def load(arch: str):
    """The object NAME in FILE.py (the module run once per file and version); one-line errors naming the file."""
    match = ROUTE.match(arch)
    path = Path(match["file"]).expanduser()
    if not path.is_file():
        raise FlaxrayError(f"--arch {arch}: no file {path}")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _LOADED:
        from flaxray.models import keras_kind

        keras_kind.prefer_jax()
        spec = importlib.util.spec_from_file_location(f"flaxray_user_{abs(hash(key[0]))}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look their module up by name
        try:
            spec.loader.exec_module(module)
        except FlaxrayError:
            raise
        except Exception as e:
            raise FlaxrayError(f"--arch {arch}: running {path} failed: {type(e).__name__}: {e}") from None
        _LOADED[key] = module
    module = _LOADED[key]
    if not hasattr(module, match["name"]):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise FlaxrayError(f"--arch {arch}: {path} has no {match['name']!r}"
                           + (f"; it defines {', '.join(names)}" if names else ""))
    return as_factory(getattr(module, match["name"]), arch)


def file_hash(arch: str) -> str:
    import hashlib

    return hashlib.sha256(Path(ROUTE.match(arch)["file"]).expanduser().read_bytes()).hexdigest()


def kind(obj) -> str:
    """KERAS or NNX for a factory or builder (a keras.Model instance is first made a builder: `as_factory`)."""
    if "flax.nnx" in sys.modules:
        from flax import nnx

        if inspect.isclass(obj) and issubclass(obj, nnx.Module):
            return NNX
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return KERAS
    return NNX if "rngs" in params else KERAS


def as_factory(obj, name: str) -> Callable:
    """`obj` as a factory or builder: a keras.Model instance becomes a builder of its clones (compiled as
    it is); a subclassed instance, which Keras cannot clone, is refused."""
    from flaxray.models import keras_kind

    if not keras_kind.is_keras(obj):
        if not callable(obj):
            raise FlaxrayError(f"{name}: a model is a function returning a keras.Model, an NNX factory or a "
                               f"keras.Model instance, got a {type(obj).__name__}")
        return obj
    if id(obj) in _BUILDERS:
        return _BUILDERS[id(obj)]
    k = keras_kind.keras()
    if not isinstance(obj, (k.Sequential, k.Model)) or type(obj).__name__ not in ("Functional", "Sequential"):
        raise FlaxrayError(f"{name}: a subclassed keras.Model instance ({type(obj).__name__}) cannot be cloned for "
                           "each seed; give the function that builds it instead")

    def builder():
        clone = k.models.clone_model(obj)
        if obj.compiled:
            clone.compile_from_config(obj.get_compile_config())
        return clone

    builder.__name__ = obj.name
    _BUILDERS[id(obj)] = builder
    return builder
