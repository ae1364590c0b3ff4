# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := out/demo

.PHONY: demo test browser engines bench image clean

# Flink and Spark for launch/flink.sh, launch/spark.sh and the tests that run
# the job on them: Beam's job servers (built from Beam's runners on Maven
# Central, launch/job_servers/), and Flink's and Spark's own distributions
# (the jars PyPI's apache-flink-libraries and pyspark ship) for standalone
# clusters. About 1 GB, fetched once. Beam's Python SDK talks to a job server
# of an older Beam: the newest whose runner and its dependencies are served.
ENGINES ?= .cache/engines
BEAM_JOB_SERVER_VERSION := 2.62.0
FLINK_VERSION := 1.19.3
SPARK_VERSION := 3.5.9
FLINK_JOB_SERVER := $(ENGINES)/beam-runners-flink-1.19-job-server-$(BEAM_JOB_SERVER_VERSION).jar
SPARK_JOB_SERVER := $(ENGINES)/beam-runners-spark-3-job-server-$(BEAM_JOB_SERVER_VERSION).jar
FLINK_DIST := $(ENGINES)/flink-$(FLINK_VERSION)
SPARK_DIST := $(ENGINES)/spark-$(SPARK_VERSION)

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
test: $(STAMP) browser engines
	$(PY) -m pytest -q tests
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -m cross_batch tests

# The report tests open the HTML reports in headless Chromium (Debian's
# package); installed here where missing, as root or through sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

engines: $(FLINK_JOB_SERVER) $(SPARK_JOB_SERVER) $(FLINK_DIST)/.fetched $(SPARK_DIST)/.fetched

$(FLINK_JOB_SERVER): launch/job_servers/flink.pom.xml
	@command -v mvn >/dev/null && command -v java >/dev/null || { \
	    echo 'make engines: Flink and Spark need a JDK (17 or newer) and Maven: apt-get install openjdk-17-jdk-headless maven' >&2; exit 2; }
	mvn -q -B -f $< package -Dout=$(abspath $(ENGINES))
	rm -rf $(ENGINES)/build-flink

$(SPARK_JOB_SERVER): launch/job_servers/spark.pom.xml
	@command -v mvn >/dev/null && command -v java >/dev/null || { \
	    echo 'make engines: Flink and Spark need a JDK (17 or newer) and Maven: apt-get install openjdk-17-jdk-headless maven' >&2; exit 2; }
	mvn -q -B -f $< package -Dout=$(abspath $(ENGINES)) -Dspark.version=$(SPARK_VERSION)
	rm -rf $(ENGINES)/build-spark

# Flink's distribution: lib/ (flink-dist and its logging) and bin/.
$(FLINK_DIST)/.fetched: $(STAMP)
	rm -rf $(FLINK_DIST) $(ENGINES)/flink.tmp && mkdir -p $(ENGINES)/flink.tmp
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(ENGINES)/flink.tmp apache-flink-libraries==$(FLINK_VERSION)
	tar -xzf $(ENGINES)/flink.tmp/apache-flink-libraries-$(FLINK_VERSION).tar.gz -C $(ENGINES)/flink.tmp
	mv $(ENGINES)/flink.tmp/apache-flink-libraries-$(FLINK_VERSION)/deps $(FLINK_DIST)
	rm -rf $(ENGINES)/flink.tmp $(FLINK_DIST)/opt $(FLINK_DIST)/plugins
	touch $@

# Spark's distribution: jars/ as pyspark ships them, and a RELEASE file as a
# distribution has.
$(SPARK_DIST)/.fetched: $(STAMP)
	rm -rf $(SPARK_DIST) $(ENGINES)/spark.tmp && mkdir -p $(ENGINES)/spark.tmp $(SPARK_DIST)
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(ENGINES)/spark.tmp pyspark==$(SPARK_VERSION)
	tar -xzf $(ENGINES)/spark.tmp/pyspark-$(SPARK_VERSION).tar.gz -C $(ENGINES)/spark.tmp pyspark-$(SPARK_VERSION)/deps/jars
	mv $(ENGINES)/spark.tmp/pyspark-$(SPARK_VERSION)/deps/jars $(SPARK_DIST)/jars
	echo 'Spark $(SPARK_VERSION) (jars of PyPI pyspark)' > $(SPARK_DIST)/RELEASE
	rm -rf $(ENGINES)/spark.tmp
	touch $@

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
