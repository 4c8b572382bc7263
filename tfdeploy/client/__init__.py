"""The lean client: protos, requests and masks, without importing TensorFlow."""
