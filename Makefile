# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TFD    := $(VENV)/bin/tfdeploy
STAMP  := $(VENV)/.installed
DEMO_BASE := models/deeplab

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test venv lint clean docker-images chromium protobuf-cpp

# Editable install: pyproject's package-dir makes it a plain path entry in a .pth file, no
# import hook (client start-up time), and no deprecated compat mode for setuptools to warn.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing tfdeploy and its dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# export -> inspect -> serve (auto: docker, native or embedded) -> predict -> stop
demo: $(STAMP)
	$(TFD) export --output $(DEMO_BASE)
	$(TFD) inspect $(DEMO_BASE)
	$(TFD) serve $(DEMO_BASE) --name demo
	$(TFD) predict examples/ --output-dir masks --overlay; rc=$$?; \
	  $(TFD) stop demo; exit $$rc
	@echo "masks written to masks/ (open masks/*.overlay.jpg to see them on the images)"

# Images for the docker tests, when a docker engine answers (built once, then reused).
docker-images: $(STAMP)
	@if docker info >/dev/null 2>&1; then \
	  echo "==> docker images for the docker tests (built when missing or tfdeploy changed)"; \
	  PYTHON=$(PY) bash docker/build.sh; \
	else echo "no docker engine: docker tests will be skipped"; fi

# The KServe SDK and Triton's client (their own venv: both pin protobuf < 7, TensorFlow
# here wants 7) to check generated InferenceServices with KServe's own models and to talk
# the Open Inference Protocol (v2) to the embedded server with clients no one here wrote.
# Optional: those tests skip without it.
KSERVE_STAMP := .venv-kserve/.installed-v2
$(KSERVE_STAMP):
	@($(PYTHON) -m venv .venv-kserve && .venv-kserve/bin/pip install -q kserve pyyaml \
	  'tritonclient[http,grpc]' && touch .venv-kserve/.installed $(KSERVE_STAMP)) \
	  || echo "KServe SDK / tritonclient unavailable: their tests will be skipped"

# TensorFlow 2.12 (oneDNN v2.7; 2.21 here has v3.7) in a venv of its own, to check that
# exports written here compute the same masks in an older TensorFlow build, as older TF
# Serving images carry (tests/test_precision.py).  Optional: that test skips without it.
OLD_TF_STAMP := .venv-tf2.12/.installed
$(OLD_TF_STAMP):
	@($(PYTHON) -m venv .venv-tf2.12 && .venv-tf2.12/bin/pip install -q 'tensorflow-cpu==2.12.0' \
	  && touch $(OLD_TF_STAMP)) \
	  || echo "TensorFlow 2.12 unavailable: its test will be skipped"

# Debian's headless Chromium for the `tfdeploy ui` browser tests (Playwright drives it;
# its own browser download needs the network).  Installed when missing and apt-get can;
# without it those tests are skipped, saying why.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null || echo "chromium could not be installed"; \
	  else echo "no chromium (apt-get install chromium chromium-driver): browser tests will be skipped"; fi; \
	fi

# protobuf's C++ JSON printer, to hold the REST status and metadata text to it
# (tests/test_proto_json.py compiles tests/cpp/proto_json.cc); skipped without it.
protobuf-cpp:
	@if ! command -v g++ >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/util/json_util.h ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing g++ and libprotobuf-dev for the REST text tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      g++ libprotobuf-dev >/dev/null || echo "libprotobuf-dev could not be installed"; \
	  else echo "no g++/libprotobuf-dev: the protobuf printer tests will be skipped"; fi; \
	fi

test: $(STAMP) docker-images $(KSERVE_STAMP) $(OLD_TF_STAMP) chromium protobuf-cpp
	$(PY) -m ruff check tfdeploy tests bench checkpoints tools
	$(PY) -m pytest -q --durations=30

lint: $(STAMP)
	$(PY) -m ruff check tfdeploy tests bench checkpoints tools

clean:
	rm -rf $(VENV) .venv-kserve .venv-tf2.12 models masks deploy .pytest_cache
