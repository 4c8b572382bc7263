"""The client: transports (gRPC, REST), the endpoint pool with its retry policy, and
images in, masks out.  Never imports TensorFlow (a test enforces it)."""
