"""Class names: read from ``--labels FILE``, checked against the model, served by the
model itself.

The names travel inside the SavedModel as a ``class_names`` signature (a string constant),
so any TF Serving answers them and a client needs nothing but the server to name classes.
Its shape is what tensorflow_model_server can serve on every path: its REST API refuses a
signature without inputs ("Failed to get input map for signature"), and with
``--enable_batching`` every input needs a batch dimension ("Batching Run() input tensors
must have at least one dimension") and every output as many rows as the inputs.  So it
takes ``unused`` int32 [N] (values ignored) and returns ``class_names`` string
[N, classes], the names once per row: ``{"signature_name": "class_names", "inputs":
{"unused": [0]}}`` over REST.
"""

from __future__ import annotations

from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.palette import VOC_CLASSES
from tfdeploy.tfs.names import CLASS_NAMES, CLASS_NAMES_INPUT

#: A name longer than this is surely not a class name (a binary file read by mistake).
MAX_NAME_CHARS = 200


def read_labels(path: str | Path) -> list[str]:
    """One class name per line, in class index order.  Blank lines at the end are
    ignored; a blank line before a name is an error (it would shift every later index)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file", param="labels") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a file of class names",
                        param="labels") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file of class names", param="labels") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read ({exc.strerror})", param="labels") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"{p}: no class names (one per line)", param="labels")
    for number, name in enumerate(lines, 1):
        if not name:
            raise UserError(f"{p}:{number}: an empty class name (one name per line, in "
                            "class index order)", param="labels")
        if len(name) > MAX_NAME_CHARS:
            raise UserError(f"{p}:{number}: a class name of {len(name)} characters (at most "
                            f"{MAX_NAME_CHARS})", param="labels")
    seen: dict[str, int] = {}
    for number, name in enumerate(lines, 1):
        if name in seen:
            raise UserError(f"{p}:{number}: {name!r} is also on line {seen[name]} (each "
                            "class needs its own name)", param="labels")
        seen[name] = number
    return lines


def check_count(names: list[str], num_classes: int, path: str | Path) -> list[str]:
    """``names`` when there is one per class; UserError otherwise (a shifted or short
    list would name every mask wrongly)."""
    if len(names) != num_classes:
        raise UserError(f"{path} has {len(names)} class names, the model has "
                        f"{num_classes} classes", param="labels")
    return names


def default_names(num_classes: int) -> list[str] | None:
    """Pascal VOC's names for a 21-class model (what DeepLab models are most often
    trained on); None otherwise (clients then say ``class N``)."""
    return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else None


def add_signature(module, names: list[str], signatures: dict) -> dict:
    """Attach the ``class_names`` function to ``module`` (so it is saved with it) and
    return ``signatures`` with it added.  The names are a constant of the graph."""
    import tensorflow as tf

    names = list(names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name=CLASS_NAMES_INPUT)])
    def class_names(unused):
        # only its row count is used: TF Serving's REST API and its batching need an input
        rows = tf.shape(unused)[0]
        return {CLASS_NAMES: tf.tile(tf.constant(names, tf.string)[tf.newaxis], [rows, 1])}

    module.class_names_fn = class_names
    return {**signatures, CLASS_NAMES: class_names.get_concrete_function()}
