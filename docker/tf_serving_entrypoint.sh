#!/bin/sh
# Same contract as the official image's entrypoint: extra arguments are appended.
exec tfdeploy-model-server --port=8500 --rest_api_port=8501 \
  --grpc_host=0.0.0.0 --rest_api_host=0.0.0.0 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
