# tfdeploy-model-server behind the official tensorflow/serving image contract:
# MODEL_NAME (default "model"), MODEL_BASE_PATH (default /models), serves
# $MODEL_BASE_PATH/$MODEL_NAME, gRPC on 8500, REST on 8501, extra args appended.
# Built by docker/build.sh from a context holding wheels/ (no index access needed).
ARG BASE=tfdeploy/base:bookworm
FROM ${BASE}
# Dependencies first (a layer reused while they do not change), then tfdeploy itself.
COPY requirements.txt /tmp/requirements.txt
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/tfdeploy \
 && /opt/tfdeploy/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels \
      -r /tmp/requirements.txt \
 && rm -rf /tmp/wheels
COPY app /tmp/app
RUN /opt/tfdeploy/bin/pip install -q --no-index --no-cache-dir --no-deps /tmp/app/*.whl \
 && rm -rf /tmp/app
ENV MODEL_NAME=model MODEL_BASE_PATH=/models TF_CPP_MIN_LOG_LEVEL=3 PATH=/opt/tfdeploy/bin:$PATH
COPY tf_serving_entrypoint.sh /usr/bin/tf_serving_entrypoint.sh
RUN chmod +x /usr/bin/tf_serving_entrypoint.sh && mkdir -p /models
EXPOSE 8500 8501
# Not root: the server needs no privilege (tfdeploy serve and the manifests set a user
# too; this covers a plain `docker run`).
USER 1000:1000
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
