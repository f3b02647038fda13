"""Small helpers every scarls node uses: typed parameter declaration and a standard `main()`.

`run_node(cls)` is the house entry point: init, build the node, (auto)configure + activate a
lifecycle node when its `autostart` parameter is true, spin a multi-threaded executor, and on
SIGINT/SIGTERM or an error always call `node.safe_stop()` (drivers hold position there), destroy
the node and `rclpy.try_shutdown()`.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}


def declare(node, name: str, default: Any, description: str, *, read_only: bool = False,
            string_array: bool = False) -> None:
    """Declare one parameter with its type and description in one place."""
    if string_array:
        ptype = ParameterType.PARAMETER_STRING_ARRAY
    else:
        ptype = _TYPES[type(default)]
    node.declare_parameter(name, default, ParameterDescriptor(
        type=ptype, description=description, read_only=read_only,
        dynamic_typing=isinstance(default, float)))


def get(node, name: str) -> Any:
    value = node.get_parameter(name).value
    return value


def get_float(node, name: str) -> float:
    return float(node.get_parameter(name).value)


SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


def autostart(node: LifecycleNode) -> bool:
    """configure + activate in-process; False (and logged) if either transition fails."""
    node.trigger_configure()
    if node._state_machine.current_state[1] != 'inactive':  # noqa: SLF001 (rclpy has no getter)
        node.get_logger().error('configure failed: the node stays unconfigured (see above)')
        return False
    node.trigger_activate()
    if node._state_machine.current_state[1] != 'active':  # noqa: SLF001
        node.get_logger().error('activate failed (see above)')
        return False
    return True


def lifecycle_state(node: LifecycleNode) -> str:
    return node._state_machine.current_state[1]  # noqa: SLF001


def _shut_down_soon(wait_s: float = 2.0) -> bool:
    """True once the ROS context is shut down, waiting up to `wait_s`: a SIGINT's shutdown
    completes in rclpy's signal thread, so a callback can fail on the closing context (pybind's
    conversion error) a moment before `rclpy.ok()` turns False."""
    deadline = time.monotonic() + wait_s
    while rclpy.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def print_help_if_asked(module: str, args=None) -> bool:
    """``-h`` / ``--help`` before ``--ros-args``: print the node's description (its module's
    docstring) and how to set its parameters, and say so (the caller exits 0 without starting
    the node)."""
    argv = list(sys.argv if args is None else args)
    own = argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv
    if not any(a in ('-h', '--help') for a in own):
        return False
    import os
    doc = (sys.modules[module].__doc__ or '').strip()
    exe = os.path.basename(argv[0]) if argv else ''
    if not exe or exe.startswith('-') or exe.endswith('.py'):
        # python -m: the executable's name is the first word of the node's description
        first = doc.split(':', 1)[0]
        exe = first if first.isidentifier() else module
    sys.stdout.write(
        f'usage: {exe} [--ros-args [-r __ns:=/ECU] [--params-file FILE] [-p NAME:=VALUE ...]]\n'
        f'       ros2 run scarls {exe} --ros-args ...\n\n{doc}\n\n'
        'Parameters come from a ROS parameters file (config/ecu.yaml is the ECU default) and '
        '-p overrides;\n`ros2 param describe` lists them with their descriptions on a running '
        'node.\n')
    return True


def run_node(node_cls, args=None) -> int:
    """Standard main(): returns a process exit code."""
    if print_help_if_asked(node_cls.__module__, args):
        return 0
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] [%(name)s]: %(message)s')
    # SIGUSR1 writes every thread's stack to stderr (the node's log): what the launcher sends
    # a node that ignored SIGINT and SIGTERM before it kills it, so the log says where it hung
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = node_cls()
        if isinstance(node, LifecycleNode) and node.get_parameter('autostart').value:
            if not autostart(node):
                code = 1
        # One thread: every callback is short (long work has its own thread), and rclpy's
        # MultiThreadedExecutor busy-waits on busy callback groups (measured: ~90 % of a core).
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # the last line of defence: log, stop safely, exit non-zero
        if node is not None and _shut_down_soon():
            # SIGINT shut the context down while a callback was publishing: that callback's
            # error ("publisher's context is invalid", or pybind's conversion error) is part
            # of a normal stop, not a failure
            sys.stderr.write(f'stopping: a callback ended with {exc!r} after shutdown\n')
        elif node is not None:
            node.get_logger().fatal(f'unhandled error: {exc!r}')
            code = 1
        else:
            sys.stderr.write(f'node failed to start: {exc!r}\n')
            code = 1
    finally:
        if node is not None:
            try:
                stop = getattr(node, 'safe_stop', None)
                if stop is not None:
                    stop()
            finally:
                destroy_within(node, DESTROY_TIMEOUT_S, code)
        rclpy.try_shutdown()
    return code


DESTROY_TIMEOUT_S = 10.0   # a node's DDS endpoints not released in this long: exit without them


def destroy_within(node, timeout_s: float, code: int) -> None:
    """``node.destroy_node()``, or, if the middleware has not released the node's endpoints
    after ``timeout_s``, exit the process with ``code`` without waiting for it.

    Called after the node's own stop (``safe_stop``: the robot holds, the episode is closed),
    so nothing of ours is left undone. Seen on this stack a few times in hundreds of runs:
    ``destroy_node`` blocked in the DDS layer (``Publisher.destroy``) after SIGINT, and the
    node ignored SIGINT and SIGTERM until it was killed. The stacks go to the log first; the
    launcher cleans the shared memory such an exit leaves behind."""
    def give_up() -> None:
        sys.stderr.write(f'stopping: the middleware did not release this node\'s endpoints in '
                         f'{timeout_s:g} s (destroy_node blocked in DDS); the node\'s own stop '
                         f'is done: exiting with {code} without waiting. Stacks:\n')
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        node.destroy_node()
    finally:
        watchdog.cancel()


def request_checkpoint_chunk(client, version: int, offset: int, length: int,
                             timeout_s: float):
    """One ``GetCheckpointChunk`` call from a worker thread while the node's executor keeps
    spinning (the reply arrives through it): a ``ChunkReply`` for
    :class:`~scarls.checkpoints.transfer.ChunkFetcher`. ``TransferError`` when the service is
    not there or does not answer within ``timeout_s``."""
    from scarls_interfaces.srv import GetCheckpointChunk

    from scarls.checkpoints.transfer import ChunkReply, TransferError

    if not client.wait_for_service(timeout_sec=timeout_s):
        raise TransferError(f'{client.srv_name} is not available')
    done = threading.Event()
    future = client.call_async(
        GetCheckpointChunk.Request(version=version, offset=offset, length=length))
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout_s):
        client.remove_pending_request(future)
        raise TransferError(f'no reply from {client.srv_name} within {timeout_s} s')
    r = future.result()
    return ChunkReply(ok=r.ok, error=r.error, total_size=r.total_size, sha256=r.sha256,
                      data=bytes(r.data))
