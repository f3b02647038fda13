"""The import layering of src/scarls: every import (module level or inside a function) points
down. Parsed with ast, so a back-arrow fails here before anyone runs the code.

Floors, lowest first; a module may import modules of its own room and of lower floors only (two
rooms on one floor do not know each other). The ROS adapters (each room's ``node.py`` and the
few other modules that hold a node) sit above every pure module: pure logic never imports
them. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / 'src' / 'scarls'

#: The floor of each room (or of a module, where a room has modules on several floors); the
#: longest matching prefix wins.
FLOORS: dict[str, int] = {
    'scarls.common': 0,
    'scarls.robot': 1,
    'scarls.diagnostics': 1,
    'scarls.security': 1,
    'scarls.sim': 2,
    'scarls.camera': 2,
    'scarls.episodes': 2,
    'scarls.policies': 2,
    'scarls.checkpoints': 3,
    'scarls.fleet': 3,
    'scarls.driver': 3,
    'scarls.actor': 3,
    'scarls.teleop': 3,
    'scarls.scheduler': 3,
    'scarls.learner': 4,
    'scarls.ros': 5,
    # the ROS adapters: nodes and the tools that run ROS themselves
    'scarls.robot.probe': 6,
    'scarls.camera.capture': 6,
    'scarls.sim.clock_node': 6,
    'scarls.bringup': 6,
    'scarls.bags': 6,
    'scarls.dashboard': 7,
    'scarls.foxglove': 7,
    'scarls.cli': 8,
}
NODE_FLOOR = 7
"""``<room>.node`` modules (the nodes) live here."""

#: Imports that cross a room on the same floor on purpose, with the reason.
ALLOWED_SIDEWAYS: dict[tuple[str, str], str] = {
    ('scarls.learner.rollout', 'scarls.actor.chunking'):
        'the simulated rollout runs the actor\'s chunk executor, the same code as on the robot',
    ('scarls.learner.rollout', 'scarls.teleop.gate'):
        'the simulated rollout runs the teleop\'s intervention gate, the same code as the node',
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def floor(module: str) -> int:
    if module.endswith('.node'):
        return NODE_FLOOR
    best = max((p for p in FLOORS if module == p or module.startswith(p + '.')),
               key=len, default=None)
    assert best is not None, f'{module} has no floor in tests/test_layering.py: add its room'
    return FLOORS[best]


def room(module: str) -> str:
    return '.'.join(module.split('.')[:2])


def imports(path: Path) -> set[str]:
    """Every scarls module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from scarls.fleet import selector` imports a module, not a name
            found.update(f'{node.module}.{a.name}' for a in node.names
                         if (SRC.parent / node.module.replace('.', '/') / a.name).exists()
                         or (SRC.parent / node.module.replace('.', '/') / f'{a.name}.py').exists())
    return {m for m in found if m.startswith('scarls.') and m != 'scarls.__version__'}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob('*.py'))}


def back_arrows(modules: dict[str, Path]) -> list[str]:
    wrong = []
    for module, path in modules.items():
        if module == 'scarls':
            continue
        for target in sorted(imports(path)):
            if room(target) == room(module) and floor(target) <= floor(module):
                continue
            if (module, target) in ALLOWED_SIDEWAYS:
                continue
            if floor(target) >= floor(module):
                wrong.append(f'{module} (floor {floor(module)}) imports {target} '
                             f'(floor {floor(target)})')
    return wrong


def test_every_import_points_down():
    wrong = back_arrows(all_modules())
    assert not wrong, 'imports that point up or sideways:\n' + '\n'.join(wrong)


def test_every_module_has_a_floor():
    for module in all_modules():
        if module != 'scarls':
            floor(module)


def test_the_top_level_holds_only_rooms():
    loose = sorted(p.name for p in SRC.glob('*.py') if p.name != '__init__.py')
    assert not loose, f'modules beside the rooms of src/scarls: {loose}'


def test_the_fleet_does_not_import_the_learner():
    for module, path in all_modules().items():
        if room(module) == 'scarls.fleet':
            assert not {t for t in imports(path) if room(t) == 'scarls.learner'}, module


@pytest.mark.parametrize('backend', ['scarls.driver.sim', 'scarls.driver.arx5',
                                     'scarls.driver.bridge'])
def test_driver_backends_import_the_interface_not_the_registry(backend):
    modules = all_modules()
    targets = imports(modules[backend])
    assert 'scarls.driver.base' in targets
    others = {'scarls.driver.backends', 'scarls.driver.sim', 'scarls.driver.arx5',
              'scarls.driver.bridge', 'scarls.driver.node'} - {backend}
    assert not targets & others, f'{backend} imports {sorted(targets & others)}'


def test_a_back_arrow_is_caught(tmp_path):
    # the check itself: a lazy upward import and a sideways one in a floor module are reported
    fake = tmp_path / 'weights.py'
    fake.write_text('import math\n\n\ndef f():\n'
                    '    from scarls.learner import online\n'
                    '    import scarls.checkpoints.registry\n'
                    '    from scarls.common import device\n')
    wrong = back_arrows({'scarls.fleet.weights': fake})
    assert [w.split(' imports ')[1].split()[0] for w in wrong] == [
        'scarls.checkpoints.registry', 'scarls.learner', 'scarls.learner.online']
