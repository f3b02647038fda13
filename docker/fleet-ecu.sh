#!/bin/sh
# One learning ECU of a fleet in a container (docker/compose.yaml): the project's parameters
# (config/ecu.yaml) with the learner taking part in the fleet all-reduce, then
# `scarls ecu --learn` with the arguments given. The learner takes the rendezvous, its rank and
# the fleet's size from MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, the fleet key from
# SCARLS_FLEET_KEY_FILE (docs/FLEET.md); OFFLINE_ROOT: the demonstrations every ECU shares.
set -eu
params=${PARAMS_OUT:-/tmp/scarls-fleet-params.yaml}
python - "$params" <<'PY'
import os
import sys
from pathlib import Path

import yaml

from scarls.bringup import default_params_file

params = yaml.safe_load(default_params_file().read_text())
learner = params['/**/learner']['ros__parameters']
learner['fleet'] = True
if os.environ.get('OFFLINE_ROOT'):
    learner['offline_root'] = os.environ['OFFLINE_ROOT']
Path(sys.argv[1]).write_text(yaml.safe_dump(params, sort_keys=False))
PY
exec scarls ecu --learn --params-file "$params" "$@"
