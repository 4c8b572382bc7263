# tfdeploy-model-server behind the official tensorflow/serving image contract:
# MODEL_NAME (default "model"), MODEL_BASE_PATH (default /models), serves
# $MODEL_BASE_PATH/$MODEL_NAME, gRPC on 8500, REST on 8501, extra args appended.
# Built by docker/build.sh from a context holding wheels/ (no index access needed).
ARG BASE=tfdeploy/base:bookworm
FROM ${BASE}
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/tfdeploy \
 && /opt/tfdeploy/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels tfdeploy \
 && rm -rf /tmp/wheels
ENV MODEL_NAME=model MODEL_BASE_PATH=/models TF_CPP_MIN_LOG_LEVEL=3 PATH=/opt/tfdeploy/bin:$PATH
COPY tf_serving_entrypoint.sh /usr/bin/tf_serving_entrypoint.sh
RUN chmod +x /usr/bin/tf_serving_entrypoint.sh && mkdir -p /models
EXPOSE 8500 8501
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
