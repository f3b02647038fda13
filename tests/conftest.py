"""Test-run isolation for the ROS 2 tests: one ROS_DOMAIN_ID per test run, discovery on this host
only, and Fast DDS shared-memory files cleaned after the run if any process had to be killed."""

from __future__ import annotations

import os
import random

import pytest

from scarls.launcher import clean_fastdds_shm, ros_env

# Chosen before anything in this process initialises rclpy; child processes inherit it.
_DOMAIN = int(os.environ.get('SCARLS_TEST_DOMAIN_ID') or (
    10 + (os.getpid() * 7 + random.SystemRandom().randint(0, 10_000)) % 220))
os.environ.update(ros_env(_DOMAIN, base={}))


@pytest.fixture(scope='session')
def domain_id() -> int:
    return _DOMAIN


@pytest.fixture(scope='module')
def ros():
    """rclpy initialised in the test process for one test module."""
    import rclpy
    rclpy.init(args=[])
    try:
        yield rclpy
    finally:
        rclpy.try_shutdown()


@pytest.fixture
def node_group(tmp_path, domain_id):
    """A ProcessGroup for node processes; always stopped (SIGINT, then harder) after the test."""
    from rosutil import new_group
    group = new_group(domain_id, tmp_path / 'logs')
    try:
        yield group
    finally:
        group.stop()


def pytest_sessionfinish(session, exitstatus):
    clean_fastdds_shm()
