"""DDS Security in the middleware this project installs: not compiled in, and it fails closed.

The Fast DDS and rmw_fastrtps wheels are built without DDS Security (no builtin PKI-DH
authentication, access control or AES-GCM-GMAC plugins). What matters then is that asking for
security does not silently give an unsecured node: with a keystore enclave, in either
strategy, creating a node fails; with ``Enforce`` and no enclave, too. Only ``Permissive``
without an enclave runs unsecured (by definition). docs/SECURITY.md ("Fleet rendezvous and
DDS") says what a real install does instead (sros2).

If the wheels gain DDS Security, the first test fails on purpose: then enable enclaves (a
keystore per fleet, an enclave per ECU) and replace this file with a test that two secured
nodes talk and an unsecured one is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scarls.security.dds import PLUGIN_MARKERS, RMW_WITHOUT_SECURITY, dds_security_support

pytestmark = pytest.mark.ros

ENCLAVE = '/scarls/ecu0'
ENCLAVE_FILES = ('cert.pem', 'key.pem', 'identity_ca.cert.pem', 'permissions_ca.cert.pem',
                 'governance.p7s', 'permissions.p7s')

NODE = """
import sys
import rclpy
try:
    rclpy.init(args=[])
    node = rclpy.create_node('dds_security_probe')
except Exception as exc:
    print('REFUSED', exc, flush=True)
    sys.exit(3)
print('CREATED', flush=True)
node.destroy_node()
rclpy.try_shutdown()
"""


def test_the_installed_middleware_has_no_dds_security():
    support = dds_security_support()
    assert support.fastdds and support.rmw, support
    assert not support.available, (
        f'{support.describe()}: the middleware now has DDS Security - enable enclaves and '
        'update docs/SECURITY.md and this test (see the module docstring)')
    assert support.plugins == () and not support.rmw_supports_security
    assert 'not compiled in' in support.describe()


def test_the_detector_recognises_a_build_with_security(tmp_path):
    (tmp_path / 'libfastdds.so.3.2').write_bytes(b'\0'.join((b'x', *PLUGIN_MARKERS, b'y')))
    (tmp_path / 'librmw_fastrtps_shared_cpp.so').write_bytes(b'\0rmw\0')
    assert dds_security_support([tmp_path], system=False).available
    (tmp_path / 'librmw_fastrtps_shared_cpp.so').write_bytes(b'\0' + RMW_WITHOUT_SECURITY)
    assert not dds_security_support([tmp_path], system=False).available
    (tmp_path / 'librmw_fastrtps_shared_cpp.so').write_bytes(b'\0rmw\0')
    (tmp_path / 'libfastdds.so.3.2').write_bytes(PLUGIN_MARKERS[0])
    partial = dds_security_support([tmp_path], system=False)
    assert not partial.available and 'builtin.Access-Permissions' in partial.describe()
    assert dds_security_support([tmp_path / 'none'], system=False).describe() \
        == 'no Fast DDS library found'


def _node(tmp_path, strategy: str, keystore: str | None, domain_id: int
          ) -> subprocess.CompletedProcess:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_SECURITY_ENABLE='true',
               ROS_SECURITY_STRATEGY=strategy, ROS_SECURITY_ENCLAVE_OVERRIDE=ENCLAVE,
               ROS_SECURITY_KEYSTORE=keystore or str(tmp_path / 'no_keystore'))
    return subprocess.run([sys.executable, '-c', NODE], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize('strategy', ['Enforce', 'Permissive'])
def test_a_node_given_an_enclave_is_refused_rather_than_unsecured(tmp_path, domain_id,
                                                                  strategy):
    enclave = tmp_path / 'keystore' / 'enclaves' / ENCLAVE.strip('/')
    enclave.mkdir(parents=True)
    for name in ENCLAVE_FILES:   # the files an sros2 enclave holds (their content is not read)
        (enclave / name).write_text('placeholder\n')
    out = _node(tmp_path, strategy, str(tmp_path / 'keystore'), domain_id)
    assert out.returncode == 3 and 'REFUSED' in out.stdout, out.stdout + out.stderr
    assert "doesn't have the security libraries" in out.stdout


def test_enforce_without_an_enclave_is_refused_and_permissive_runs_unsecured(tmp_path,
                                                                           domain_id):
    enforce = _node(tmp_path, 'Enforce', None, domain_id)
    assert enforce.returncode == 3 and 'does not exist' in enforce.stdout, enforce.stdout
    permissive = _node(tmp_path, 'Permissive', None, domain_id)
    assert permissive.returncode == 0 and 'CREATED' in permissive.stdout, permissive.stderr
