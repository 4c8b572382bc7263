"""The embedded model server: TF Serving's Source -> Loader -> Manager pipeline in Python,
speaking TF Serving's gRPC and REST APIs with the official protos."""
