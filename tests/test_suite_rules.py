"""Rules of the test suite itself, read from the test sources (no test run needed).

A wait inside a test must end before the test's own timeout (pytest-timeout, pytest.ini's
``--timeout`` or a ``@pytest.mark.timeout``): otherwise the run is killed from outside with no
message saying what was awaited, instead of the wait failing with one."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
INI = TESTS.parent / 'pytest.ini'


def _global_timeout() -> float:
    addopts = configparser.ConfigParser()
    addopts.read(INI)
    found = re.search(r'--timeout[= ](\d+)', addopts['pytest']['addopts'])
    assert found, 'pytest.ini sets no --timeout'
    return float(found.group(1))


def _number(node) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return float(node.value)
    return None


def _timeout_mark(func: ast.FunctionDef) -> float | None:
    for dec in func.decorator_list:
        if isinstance(dec, ast.Call) and ast.unparse(dec.func) == 'pytest.mark.timeout':
            return _number(dec.args[0])
    return None


def _waits(func: ast.FunctionDef):
    """(line, seconds) of the waits written as literals in a test's body: ``timeout=N``,
    ``x.wait(N)``, ``probe.wait_for(cond, N, ...)``, ``time.monotonic() + N``."""
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func).rsplit('.', 1)[-1]
            for kw in node.keywords:
                if kw.arg == 'timeout' and _number(kw.value) is not None:
                    yield node.lineno, _number(kw.value)
            if name == 'wait' and node.args and _number(node.args[0]) is not None:
                yield node.lineno, _number(node.args[0])
            if name == 'wait_for' and len(node.args) > 1 and _number(node.args[1]) is not None:
                yield node.lineno, _number(node.args[1])
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and \
                'monotonic()' in ast.unparse(node.left) and _number(node.right) is not None:
            yield node.lineno, _number(node.right)


def test_no_wait_in_a_test_outlasts_the_test_timeout():
    default = _global_timeout()
    late = []
    for path in sorted(TESTS.rglob('test_*.py')):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef) or not func.name.startswith('test_'):
                continue
            limit = _timeout_mark(func) or default
            for line, seconds in _waits(func):
                if seconds >= limit:
                    late.append(f'{path.relative_to(TESTS)}:{line} waits up to {seconds:.0f} s '
                                f'in {func.name}, whose timeout is {limit:.0f} s')
    assert not late, 'give these tests a @pytest.mark.timeout above their waits:\n' + \
        '\n'.join(late)


def test_the_rule_sees_a_wait_longer_than_the_timeout():
    func = ast.parse('def test_x(p):\n    p.wait_for(ok, 400, "x")\n    t.wait(30)\n').body[0]
    assert sorted(s for _, s in _waits(func)) == [30.0, 400.0]
    marked = ast.parse('@pytest.mark.timeout(480)\ndef test_y():\n    pass\n').body[0]
    assert _timeout_mark(marked) == 480.0
