# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := out/demo

.PHONY: demo test browser bench image clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/make_demo.py $(DEMO)
	$(VENV)/bin/batch-predict --model $(DEMO)/model --input '$(DEMO)/instances/*.jsonl' \
	    --output $(DEMO)/output --key_field id --passthrough_fields label
	$(VENV)/bin/batch-predict evaluate --predictions $(DEMO)/output \
	    --labels '$(DEMO)/instances/*.jsonl' --label_field label \
	    --prediction_field churn_probability --output $(DEMO)/evaluation
	@echo
	@echo "Results are in $(DEMO)/output: predictions-*.jsonl, errors-*.jsonl, summary.json,"
	@echo "report.html (open it in a browser); the evaluation against the labels is in"
	@echo "$(DEMO)/evaluation: metrics.json, report.html"

# oneDNN picks kernels by CPU and by batch shape: the tests marked cross_batch
# (outputs of different batches compared) run again with oneDNN limited to
# AVX2, as on a CPU without AVX-512 (on an AVX-512 machine, the setting that
# moves last bits most; SSE41 moves fewer). About 1 minute.
test: $(STAMP) browser
	$(PY) -m pytest -q tests
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -m cross_batch tests

# The report tests open the HTML reports in headless Chromium (Debian's
# package); installed here where missing, as root or through sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run.py

# A worker image for Dataflow (--sdk_container_image) and Flink, for the
# virtualenv's Python and Beam versions: make image IMAGE=registry/name:tag
image: $(STAMP)
	@test -n "$(IMAGE)" || { echo 'make image: give IMAGE=registry/name:tag' >&2; exit 2; }
	docker build -f launch/Dockerfile \
	    --build-arg PYTHON_VERSION=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
	    --build-arg BEAM_VERSION=$$($(PY) -c 'import apache_beam; print(apache_beam.__version__)') \
	    -t $(IMAGE) .

clean:
	rm -rf out
