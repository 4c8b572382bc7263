"""``--precision`` for models we did not build: which apply, and a Keras model rebuilt to
compute in bfloat16 or float16.

Our own DeepLab model (``model.py``) is built layer by layer by us, so every precision,
int8 included, is ours to choose.  A Keras model is rebuilt from its layer configs with a
mixed dtype policy (weights stay float32, each layer computes in the reduced dtype, as
``precision.py`` has our model do), which any Keras model built from layers allows.  int8
needs its convolutions rewritten into oneDNN's quantized kernels with calibrated ranges,
which only our own model's are; a frozen graph's or a SavedModel's computation is fixed
in its graph.  Where a precision cannot apply the export stops with one line saying so:
never a float32 export under another name.
"""

from __future__ import annotations

from tfdeploy.errors import UserError
from tfdeploy.export import sources
from tfdeploy.export.config import DEFAULT_PRECISION

#: Precisions each source kind can be exported in.
APPLIES: dict[str, tuple[str, ...]] = {
    sources.CHECKPOINT: ("float32", "bfloat16", "float16", "int8"),
    sources.KERAS: ("float32", "bfloat16", "float16"),
    sources.SAVED_MODEL: ("float32",),
    sources.FROZEN_GRAPH: ("float32",),
}

_WHY = {
    sources.FROZEN_GRAPH: "a frozen graph's dtypes are fixed in its graph",
    sources.SAVED_MODEL: "a SavedModel's dtypes are fixed in its graph (export the Keras "
                         "model it came from instead)",
    sources.KERAS: "int8 rewrites convolutions into oneDNN's quantized kernels, which only "
                   "tfdeploy's own DeepLab checkpoints allow",
}


def check(kind: str, precision: str) -> str:
    """``precision`` when it applies to a ``kind`` source; UserError saying which do."""
    allowed = APPLIES.get(kind, (DEFAULT_PRECISION,))
    if precision not in allowed:
        what = kind.replace("_", " ")
        raise UserError(f"--precision {precision} does not apply to a {what}: "
                        f"{_WHY.get(kind, 'it is served as made')}; a {what} exports as "
                        f"{' or '.join(allowed)}", param="precision")
    return precision


def keras_in(model, precision: str):
    """A copy of the Keras ``model`` whose layers compute in ``precision`` (mixed policy:
    float32 weights, reduced-precision compute) with the same weights."""
    import tensorflow as tf

    keras = tf.keras
    policy = f"mixed_{precision}"

    def clone(layer):
        config = layer.get_config()
        if type(layer).__name__ != "InputLayer":
            config["dtype"] = policy
        return type(layer).from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
        copy.set_weights(model.get_weights())
    except Exception as exc:  # subclassed models, custom layers without get_config...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot rebuild this Keras model in {precision} ({first}); export "
                        "it as float32", param="precision") from None
    return copy
