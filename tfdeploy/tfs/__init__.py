"""TensorFlow Serving's contract, TensorFlow-free.

Everything both ends of the wire agree on lives here once: the generated protobuf modules
(``protos``), numpy <-> TensorProto (``tensors``), the REST JSON codec (``json_tensors``),
status codes with their HTTP mapping (``codes``), signature names, tensor keys and default
ports (``names``), version directories (``versions``) and SavedModel reading
(``saved_model``).

``export``, ``serving`` and ``client`` import this package and never each other; this
package imports nothing of ours except ``tfdeploy.errors``.  A test enforces both rules.
"""
