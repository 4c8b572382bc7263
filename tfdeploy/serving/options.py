"""Server options: the parsed command line, free of TensorFlow so flag errors are instant.

``ServerOptions`` has one field per implemented flag of the table in ``tfdeploy.tfs.flags``
(same name, type and default), plus ``extra``: the accepted-but-ignored flags given.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

from tfdeploy.tfs import flags
from tfdeploy.tfs.flags import DEFAULT_MAX_REQUEST_BYTES

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "ServerOptions"]

ServerOptions = make_dataclass(
    "ServerOptions",
    [(f.name, f.type, field(default=f.default)) for f in flags.implemented()]
    + [("extra", dict, field(default_factory=dict))])
ServerOptions.__module__ = __name__
ServerOptions.__doc__ = ("tfdeploy-model-server's options: one field per implemented flag "
                         "(tfdeploy.tfs.flags), ``extra`` for ignored ones.")
