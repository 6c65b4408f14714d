"""Loading a user's module of extensions: ``fedpet run --plugin my_module`` (or a .py path).

A plugin module registers what it defines when imported (``register_method``,
``register_algorithm``, ``register_codec``); installed packages can instead declare entry
points in the groups ``fedpet.methods``, ``fedpet.algorithms`` and ``fedpet.codecs``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fedpet.errors import FedpetError


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin: a module name (``my_lab.methods``) or the path of a ``.py`` file.

    A module imported once is not imported again. An import that fails is bad input: a
    :class:`~fedpet.errors.FedpetError` naming the plugin and the error.
    """
    try:
        if not spec.endswith(".py"):
            return importlib.import_module(spec)
        path = Path(spec).resolve()
        name = f"fedpet_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        if not path.is_file():
            raise FileNotFoundError(f"no file {spec}")
        found = importlib.util.spec_from_file_location(name, path)
        assert found is not None and found.loader is not None, "a .py file has a loader"
        module = importlib.util.module_from_spec(found)
        sys.modules[name] = module
        try:
            found.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    except FedpetError:
        raise
    except Exception as exc:  # the user's module: any error in it is bad input
        raise FedpetError(
            f"--plugin {spec!r} cannot be imported: {exc.__class__.__name__}: {exc}"
        ) from None
