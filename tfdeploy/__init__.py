"""tfdeploy: a DeepLab-v3 checkpoint to TensorFlow Serving, and masks back, from Python.

    import tfdeploy

    result = tfdeploy.export()                       # demo checkpoint -> models/deeplab/<N>
    with tfdeploy.serve("models/deeplab") as server:  # docker, native or embedded
        mask = server.client().predict("scene.jpg")  # PIL palette image, pixel = class

Everything here is loaded on first use (module ``__getattr__``), so ``import tfdeploy``
costs almost nothing and never imports TensorFlow: the client starts in a fraction of a
second.  Only ``export`` (and a server process) needs TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__all__ = [
    "BadImage", "Client", "ClientError", "ExportError", "PredictError", "Server", "UserError",
    "bench", "export", "inspect", "logs", "manifest", "promote", "requests", "rollback",
    "serve", "servers", "stop", "ui",
]

# public name -> module that defines it
_LAZY = {
    "serve": "tfdeploy.api", "servers": "tfdeploy.api",
    "stop": "tfdeploy.api", "bench": "tfdeploy.api", "inspect": "tfdeploy.api",
    "logs": "tfdeploy.api", "manifest": "tfdeploy.api", "ui": "tfdeploy.api",
    "promote": "tfdeploy.api", "rollback": "tfdeploy.api", "requests": "tfdeploy.api",
    "Client": "tfdeploy.client.predict", "PredictError": "tfdeploy.client.predict",
    "BadImage": "tfdeploy.client.images", "Server": "tfdeploy.runtime.manage",
    "ClientError": "tfdeploy.client.base", "UserError": "tfdeploy.errors",
    "ExportError": "tfdeploy.errors",
}

if TYPE_CHECKING:
    from tfdeploy.api import (
        bench,
        inspect,
        logs,
        manifest,
        promote,
        requests,
        rollback,
        serve,
        servers,
        stop,
        ui,
    )
    from tfdeploy.client.base import ClientError
    from tfdeploy.client.images import BadImage
    from tfdeploy.client.predict import Client, PredictError
    from tfdeploy.errors import ExportError, UserError
    from tfdeploy.runtime.manage import Server


def __getattr__(name: str):
    if name == "demo":  # the bundled demo (``tfdeploy.demo.images()``), without an import
        return importlib.import_module("tfdeploy.demo")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfdeploy' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Export:
    """``tfdeploy.export`` is both the export function (``tfdeploy.api.export``, called
    here) and the ``tfdeploy/export/`` package, whose modules stay reachable as its
    attributes (``import tfdeploy.export.writer as w`` works)."""

    def __call__(self, *args, **kwargs):
        from tfdeploy.api import export

        return export(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(importlib.import_module("tfdeploy.export"), name)

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        from tfdeploy.api import export

        return export.__doc__

    @property
    def __signature__(self):
        import inspect

        from tfdeploy.api import export

        return inspect.signature(export)

    def __repr__(self) -> str:
        return "<function tfdeploy.export>"


export = _Export()


class _Package(types.ModuleType):
    """Importing ``tfdeploy/export/`` makes Python set it as this package's ``export``
    attribute, which would hide the function; that one assignment is dropped (``_Export``
    reaches the package's modules itself)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
