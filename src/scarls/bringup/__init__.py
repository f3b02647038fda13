"""The one description of which nodes an ECU runs, read by the launch files and by `scarls ecu`.

Both launchers (launch/ecu.launch.py on a full ROS 2 install, `scarls ecu` on a machine with only
the PyPI wheels) build their node list from `ecu_nodes()`, so they cannot drift. No rclpy here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = 'scarls'
BACKENDS = ('sim', 'arx5', 'ros2_bridge')
TELEOP_SOURCES = ('scripted', 'keyboard', 'leader')
_NAMESPACE_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


class BringupError(ValueError):
    """The ECU description is invalid (bad ECU id, unknown backend, ...)."""


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


# Simulated time in both launch files (`scarls ecu|fleet --rtf X --compute-fair [S]`).
SIM_TIME_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('rtf', '', "Simulated time at this real-time factor ('' = wall time; 0 = as "
                   'fast as the nodes keep up): a clock node drives /clock one control tick at '
                   'a time and every node sets use_sim_time (docs/SIM_TIME.md)'),
    LaunchArgument('compute_fair', '', "Compute-fair lockstep ('' = off; 'true' = the default "
                   'budget, or training steps per simulated second of every learner); implies '
                   'simulated time, rtf defaults to 0'),
)
# Declared by ecu.launch.py with these descriptions; `scarls ecu` exposes the same as flags.
ECU_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('ecu_id', 'ecu0', 'ECU id; also the ROS namespace of all its nodes'),
    LaunchArgument('robot', 'sim_dual6', 'Robot description: a built-in name (config/robots: '
                   'sim_dual6, sim_dual7, arx5_pair, agibot_g1) or the path of a YAML file'),
    LaunchArgument('backend', '', "Robot backend of the driver ('' = the robot description's): "
                   + ', '.join(BACKENDS)),
    LaunchArgument('task', 'pick_cube', 'Task name (the episode folder under data_root)'),
    LaunchArgument('data_root', 'data', 'Folder where the scheduler writes Zarr episodes'),
    LaunchArgument('params_file', '', 'ROS parameters YAML (default: config/ecu.yaml)'),
    LaunchArgument('teleop', 'scripted', 'Teleop source: ' + ', '.join(TELEOP_SOURCES)),
    LaunchArgument('learner', 'false', 'Run the online learner too (true/false)'),
    *SIM_TIME_ARGUMENTS,
)
FLEET_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('ecus', '2', 'Number of simulated ECUs (namespaces ecu0..ecu<N-1>)'),
    LaunchArgument('robot', 'sim_dual6', 'Robot description of every ECU (a built-in name or '
                   'a YAML file); the fleet averages only policies of one robot'),
    LaunchArgument('task', 'pick_cube', 'Task name (the episode folder under each ECU root)'),
    LaunchArgument('data_root', 'data/fleet', 'Fleet root: <data_root>/ecu<i>, '
                   '<data_root>/offline (demonstrations, see scarls demos)'),
    LaunchArgument('params_file', '', 'ROS parameters YAML (default: config/ecu.yaml)'),
    LaunchArgument('rendezvous_addr', '127.0.0.1', 'Address of the rendezvous store'),
    LaunchArgument('rendezvous_port', '29500', 'Port of the rendezvous store'),
    LaunchArgument('seed', '0', 'ECU i draws its scenes from seed + 1000 i'),
    LaunchArgument('fleet_key_file', '', 'The fleet key (HMAC of every rendezvous record; make '
                   'one with `python -m scarls.fleet keygen FILE`); required with more than '
                   'one ECU unless SCARLS_FLEET_KEY_FILE is exported'),
    *SIM_TIME_ARGUMENTS,
)


@dataclass(frozen=True)
class NodeSpec:
    """One node of an ECU: enough to start it with launch_ros or as a plain process."""

    name: str                 # node name (also the executable name in lib/scarls by default)
    module: str               # python -m entry point
    namespace: str
    parameters: dict = field(default_factory=dict)   # overrides on top of the params file
    exe: str = ''             # the executable in lib/scarls when it is not the node name

    @property
    def executable(self) -> str:
        return self.exe or self.name

    @property
    def fqn(self) -> str:
        return f'/{self.namespace}/{self.name}' if self.namespace else f'/{self.name}'

    def ros_args(self, params_file: str | None) -> list[str]:
        """The `--ros-args ...` tail for a plain process start."""
        args = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:=/{self.namespace}']
        if params_file:
            args += ['--params-file', params_file]
        for key, value in self.parameters.items():
            args += ['-p', f'{key}:={_param_literal(value)}']
        return args


def _param_literal(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        # Quote strings so YAML never reinterprets them ('1' stays a string, '' is allowed).
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def validate_ecu_id(ecu_id: str) -> str:
    if not _NAMESPACE_RE.match(ecu_id):
        raise BringupError(
            f'ECU id {ecu_id!r} is not a valid ROS namespace: use letters, digits and _, '
            'starting with a letter (e.g. ecu0)')
    return ecu_id


def config_file(name: str) -> Path | None:
    """config/<name>: from the source tree, else from the installed package's share dir (None
    when neither has it)."""
    source = Path(__file__).resolve().parents[3] / 'config' / name
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory(PACKAGE)) / 'config' / name
    except (ImportError, LookupError, ValueError):
        return None
    return installed if installed.is_file() else None


def default_params_file() -> Path:
    """config/ecu.yaml: from the source tree, else from the installed package's share dir."""
    found = config_file('ecu.yaml')
    if found is None:
        raise BringupError('config/ecu.yaml not found next to the scarls package; '
                           'pass params_file')
    return found


#: The variables that select a Fast DDS XML profile (the second is its older spelling).
DDS_PROFILE_KEYS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def dds_profile_env(environ: dict | None = None) -> dict[str, str]:
    """The environment the nodes need for scarls's Fast DDS profile (config/fastdds_shm.xml: a
    shared-memory segment large enough for camera streams, and an initial-peer range that lets
    more than 32 participants on one host discover each other): empty when the user already
    selected a profile, or when the file cannot be found."""
    env = os.environ if environ is None else environ
    profile = config_file('fastdds_shm.xml')
    if profile is None or any(k in env for k in DDS_PROFILE_KEYS):
        return {}
    return {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}


_PARAM_SCALARS = (bool, int, float, str)


def load_params_file(path: str | Path) -> dict:
    """Read and check a ROS parameters YAML before any node gets it: a mapping of node
    patterns (``/**/driver``) to ``{ros__parameters: {name: value}}`` with scalar or
    list-of-scalar values, as rcl accepts. A node handed a malformed file would only die at
    start with rcl's own message; this says what is wrong and where.

    Raises:
        BringupError: unreadable, not YAML, or not of that shape (the message names the key).
    """
    import yaml

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > 1_000_000:
            raise BringupError(f'{p}: {size} bytes; a parameters file is at most 1 MB')
        text = p.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as exc:
        raise BringupError(f'{p}: cannot read the parameters file: {exc}') from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BringupError(f'{p}: not valid YAML: {exc}') from exc
    if not isinstance(data, dict) or not data:
        raise BringupError(f'{p}: must map node names (e.g. /**/driver) to '
                           '{ros__parameters: {...}}')
    for node, body in data.items():
        if not isinstance(node, str) or not node:
            raise BringupError(f'{p}: node key {node!r} must be a node name or pattern')
        if not isinstance(body, dict) or set(body) != {'ros__parameters'} or \
                not isinstance(body['ros__parameters'], dict):
            raise BringupError(f'{p}: {node!r} must hold exactly one key, ros__parameters, '
                               'with a mapping of parameters')
        for name, value in body['ros__parameters'].items():
            ok = isinstance(name, str) and name and (
                isinstance(value, _PARAM_SCALARS) or (
                    isinstance(value, list) and value and
                    all(isinstance(v, _PARAM_SCALARS) for v in value) and
                    len({type(v) for v in value}) == 1))
            if not ok:
                raise BringupError(f'{p}: {node}.{name}: {value!r} is not a ROS parameter value '
                                   '(a bool, int, float, string or a non-empty list of one '
                                   'of those)')
            if isinstance(value, float) and value != value:
                raise BringupError(f'{p}: {node}.{name} is NaN')
    return data


def ecu_nodes(ecu_id: str = 'ecu0', *, backend: str = '', task: str = 'pick_cube',
              data_root: str = 'data', teleop: str = 'scripted', learner: bool = False,
              robot: str = 'sim_dual6', key_dir: str = '',
              extra: dict[str, dict] | None = None) -> list[NodeSpec]:
    """The nodes of one ECU, in start order (driver first so the robot holds before others act).

    Scheduler, actor and learner share the key directory ``key_dir`` (default
    ``<data_root>/keys``): the learner's key is created and trusted there on first start, so a
    simulated ECU signs and verifies its checkpoints with no manual step.

    `robot` (a built-in robot name or a YAML file) is every node's `robot` parameter; `backend`
    ('' = the description's) overrides the driver's backend; the description's capture cameras
    get a process each (:func:`capture_nodes`). `learner` adds the online learner (it needs
    offline demonstrations under `<data_root>/offline`, see `scarls demos`). `extra` maps node
    name -> parameter overrides (e.g. {'driver': {'image_height': 480}}).
    """
    validate_ecu_id(ecu_id)
    if backend and backend not in BACKENDS:
        raise BringupError(f'unknown backend {backend!r}; known: {", ".join(BACKENDS)}')
    if teleop not in TELEOP_SOURCES:
        raise BringupError(f'unknown teleop source {teleop!r}; known: {", ".join(TELEOP_SOURCES)}')
    if not task or '/' in task or task.startswith('.'):
        raise BringupError(f'task name {task!r} must be a plain folder name')
    extra = extra or {}
    if not robot or not isinstance(robot, str):
        raise BringupError(f'robot must be a robot name or a YAML file, got {robot!r}')
    common = {'ecu_id': ecu_id, 'task': task, 'robot': robot}
    keys = {'key_dir': str(key_dir or Path(data_root) / 'keys')}
    specs = [
        NodeSpec('driver', 'scarls.driver.node', ecu_id, {**common, 'backend': backend}),
        NodeSpec('scheduler', 'scarls.scheduler.node', ecu_id,
                 {**common, 'data_root': str(data_root), **keys}),
        NodeSpec('actor', 'scarls.actor.node', ecu_id, {**common, **keys}),
        NodeSpec('teleop', 'scarls.teleop.node', ecu_id, {**common, 'source': teleop}),
    ]
    if learner:
        specs.append(NodeSpec('learner', 'scarls.learner.node', ecu_id,
                              {**common, 'data_root': str(data_root), **keys}))
    specs += capture_nodes(robot, ecu_id)
    unknown = set(extra) - {s.name for s in specs}
    if unknown:
        raise BringupError(f'parameter overrides for unknown nodes: {sorted(unknown)}')
    return [NodeSpec(s.name, s.module, s.namespace, {**s.parameters, **extra.get(s.name, {})},
                     s.exe) for s in specs]


def capture_nodes(robot: str, namespace: str) -> list[NodeSpec]:
    """The capture processes of a robot description's ``opencv``/``realsense`` cameras (one
    process per camera, so a stuck camera never stalls the control loop; they publish
    ``camera/<name>/image_raw`` + ``camera_info`` in the ECU's namespace). Cameras of the
    simulator and of external ROS 2 drivers need none."""
    from scarls.robot import RobotDescriptionError, load_robot
    try:
        description = load_robot(robot)
    except RobotDescriptionError as exc:
        raise BringupError(str(exc)) from exc
    specs = []
    for cam in description.cameras:
        if cam.source not in ('opencv', 'realsense'):
            continue
        specs.append(NodeSpec(
            f'camera_{cam.name}', 'scarls.camera.capture', namespace,
            {'name': cam.name, 'source': cam.source, 'device': cam.device,
             'fps': float(cam.fps), 'qos': cam.qos, 'compressed': bool(cam.compressed)},
            exe='camera'))
    return specs


FLEET_SEED_STRIDE = 1000
"""ECU ``i`` of a fleet draws its scenes from ``seed + i * FLEET_SEED_STRIDE`` (its own task
variation: the fleet sees more of the state space than one robot)."""


def fleet_nodes(ecus: int, *, data_root: str = 'data/fleet', task: str = 'pick_cube',
                rendezvous_addr: str = '127.0.0.1', rendezvous_port: int = 29500,
                seed: int = 0, robot: str = 'sim_dual6', fleet_key_file: str = '',
                extra: dict[str, dict] | None = None) -> list[NodeSpec]:
    """The nodes of a fleet of simulated ECUs ``ecu0 .. ecu<N-1>``: each a complete ECU with its
    own namespace, data folder ``<data_root>/ecu<i>`` and scene seed, and a learner that joins
    the fleet's all-reduce (rank ``i`` of ``ecus`` at the rendezvous). All learners read the
    same demonstrations, ``<data_root>/offline``, so they start from the same normalisation.
    They share one key directory, ``<data_root>/keys``: every ECU trusts every learner's key.
    """
    if not isinstance(ecus, int) or isinstance(ecus, bool) or ecus < 1:
        raise BringupError(f'a fleet needs at least 1 ECU, got {ecus!r}')
    extra = extra or {}
    specs: list[NodeSpec] = []
    for i in range(ecus):
        per = {name: dict(values) for name, values in extra.items()}
        per['driver'] = {**per.get('driver', {}), 'seed': seed + i * FLEET_SEED_STRIDE}
        per['actor'] = {**per.get('actor', {}), 'seed': seed}
        per['learner'] = {**per.get('learner', {}), 'seed': seed, 'fleet': True,
                          'offline_root': str(Path(data_root) / 'offline'),
                          'fleet_addr': rendezvous_addr, 'fleet_port': int(rendezvous_port),
                          'fleet_rank': i, 'fleet_world_size': ecus,
                          **({'fleet_key_file': str(fleet_key_file)} if fleet_key_file else {})}
        specs += ecu_nodes(f'ecu{i}', task=task, data_root=str(Path(data_root) / f'ecu{i}'),
                           learner=True, robot=robot, key_dir=str(Path(data_root) / 'keys'),
                           extra=per)
    return specs


def sim_time_nodes(specs: list[NodeSpec], *, rtf: float, rate_hz: float,
                   train_steps_per_s: float = 0.0) -> list[NodeSpec]:
    """The same nodes on simulated time (docs/SIM_TIME.md): ``use_sim_time`` on every node and
    one clock process first (``scarls.sim.clock_node``) that advances ``/clock`` one control
    tick (``rate_hz``) at a time at real-time factor ``rtf``, in lockstep with every driver and
    actor (the scripted operators join with their first answered state). With
    ``train_steps_per_s`` > 0 (compute-fair mode) every learner trains that many steps per
    simulated second of a round and the clock waits for it too."""
    if not rtf >= 0:
        raise BringupError(f'the real-time factor must be >= 0 (0 = as fast as possible), '
                           f'got {rtf}')
    if not train_steps_per_s >= 0:
        raise BringupError(f'train_steps_per_s must be >= 0, got {train_steps_per_s}')
    out, participants = [], []
    for s in specs:
        params = {**s.parameters, 'use_sim_time': True}
        if s.name in ('driver', 'actor'):
            participants.append(s.fqn)
        if s.name == 'learner' and train_steps_per_s > 0:
            params['train_steps_per_s'] = float(train_steps_per_s)
            participants.append(s.fqn)
        out.append(NodeSpec(s.name, s.module, s.namespace, params, s.exe))
    clock = NodeSpec('clock', 'scarls.sim.clock_node', '', {
        'rate_hz': float(rate_hz), 'rtf': float(rtf), 'participants': participants})
    return [clock, *out]


def sim_time_if_asked(specs: list[NodeSpec], rtf: float | None,
                      train_steps_per_s: float | None, rate_hz: float
                      ) -> tuple[list[NodeSpec], bool]:
    """``--rtf X --compute-fair [S]`` (CLI) and ``rtf:=`` / ``compute_fair:=`` (launch files):
    the specs unchanged on wall time when neither is given (None), else :func:`sim_time_nodes`
    (the real-time factor defaults to 0, as fast as the nodes keep up); and whether simulated
    time is on."""
    if rtf is None and train_steps_per_s is None:
        return specs, False
    return sim_time_nodes(specs, rtf=0.0 if rtf is None else rtf, rate_hz=rate_hz,
                          train_steps_per_s=train_steps_per_s or 0.0), True


_OFF = ('', 'false', '0', 'no', 'off')
_ON = ('true', '1', 'yes', 'on', 'default')


def launch_sim_time(specs: list[NodeSpec], rtf: str, compute_fair: str,
                    robot: str) -> list[NodeSpec]:
    """The launch files' ``rtf:=`` and ``compute_fair:=`` (strings, '' = off) applied as
    ``scarls ecu --rtf X --compute-fair [S]`` applies them (:func:`sim_time_if_asked` at the
    robot's control rate)."""
    from scarls.sim.clock import DEFAULT_TRAIN_STEPS_PER_S
    rtf, compute_fair = rtf.strip(), compute_fair.strip().lower()
    try:
        factor = float(rtf) if rtf else None
    except ValueError:
        raise BringupError(f"rtf:={rtf!r} is no number (0.5, 2, 0 = as fast as possible, "
                           "'' = wall time)") from None
    if compute_fair in _OFF:
        budget = None
    elif compute_fair in _ON:
        budget = DEFAULT_TRAIN_STEPS_PER_S
    else:
        try:
            budget = float(compute_fair)
        except ValueError:
            raise BringupError(f"compute_fair:={compute_fair!r}: 'true' or training steps per "
                               'simulated second') from None
    if factor is None and budget is None:
        return specs
    from scarls.robot import load_robot
    return sim_time_if_asked(specs, factor, budget, load_robot(robot).control_rate_hz)[0]


def lifecycle_nodes(specs: list[NodeSpec]) -> list[NodeSpec]:
    """The managed (lifecycle) nodes among `specs`, which a launcher must configure + activate."""
    return [s for s in specs if s.name in ('driver', 'actor', 'scheduler', 'learner')]


def launch_node_actions(specs: list[NodeSpec], params_file: str, node_cls, lifecycle_cls) -> list:
    """launch_ros actions for `specs` (the launch files pass launch_ros.actions.Node and
    LifecycleNode, so this module imports no launch package): the params file first, then
    each node's own overrides, and scarls's Fast DDS profile unless one is selected
    (:func:`dds_profile_env`), as `scarls ecu|fleet` do."""
    managed = {s.name for s in lifecycle_nodes(specs)}
    extra = {'additional_env': env} if (env := dds_profile_env()) else {}
    return [(lifecycle_cls if spec.name in managed else node_cls)(
        package=PACKAGE, executable=spec.executable, name=spec.name, namespace=spec.namespace,
        output='screen', emulate_tty=True, parameters=[params_file, spec.parameters], **extra)
        for spec in specs]
