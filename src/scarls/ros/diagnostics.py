"""/diagnostics from a scarls node: one DiagnosticStatus once a second.

    self._diagnostics = NodeDiagnostics(self, 'safety', self._diagnostic_status)

publishes ``diagnostic_msgs/DiagnosticArray`` on the global ``/diagnostics`` topic (what
``rqt_runtime_monitor``, ``diagnostic_aggregator`` and Foxglove's diagnostics panels read) with
one status named ``<namespace>/<node>: <what>``, ``hardware_id`` the ECU id, the level, message
and key-values of ``compute()`` (a :class:`scarls.diagnostics.Status`, from the pure rules in
:mod:`scarls.diagnostics.rules`) and the node's lifecycle state. A lifecycle node that is not
active reports WARN with its state, without calling ``compute`` (whose inputs exist only once
configured) unless ``any_state=True``. An exception in ``compute`` is reported as ERROR, never
raised into the executor. Created in the node's ``__init__``: plain publisher and timer, alive
in every lifecycle state.
"""

from __future__ import annotations

from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode

from scarls.diagnostics import Level, Status
from scarls.ros import qos
from scarls.ros.node_utils import lifecycle_state

TOPIC = '/diagnostics'
PERIOD_S = 1.0


def status_to_msg(status: Status, name: str, hardware_id: str) -> DiagnosticStatus:
    msg = DiagnosticStatus()
    msg.level = bytes([int(status.level)])
    msg.name, msg.message, msg.hardware_id = name, status.message, hardware_id
    msg.values = [KeyValue(key=str(k), value=str(v)) for k, v in status.values.items()]
    return msg


class NodeDiagnostics:
    """Publishes ``compute()`` as the node's diagnostics every ``period_s`` (wall time: the
    heartbeat of the host's processes, also while a simulated clock is paused)."""

    def __init__(self, node, what: str, compute: Callable[[], Status], *,
                 any_state: bool = False, period_s: float = PERIOD_S) -> None:
        self._node = node
        self._compute = compute
        self._any_state = any_state
        self.name = f"{node.get_fully_qualified_name().lstrip('/')}: {what}"
        self.hardware_id = ''
        if node.has_parameter('ecu_id'):
            self.hardware_id = str(node.get_parameter('ecu_id').value)
        self._pub = node.create_publisher(DiagnosticArray, TOPIC, qos.DIAGNOSTICS)
        self._timer = node.create_timer(period_s, self.publish,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))

    def current(self) -> Status:
        state = lifecycle_state(self._node) if isinstance(self._node, LifecycleNode) \
            else 'active'
        if state != 'active' and not self._any_state:
            return Status.of(Level.WARN, f'not active (lifecycle state: {state})',
                             lifecycle=state)
        try:
            status = self._compute()
        except Exception as exc:  # noqa: BLE001 - a broken status must not stop the node
            status = Status.of(Level.ERROR, f'status unavailable: {exc!r}')
        return status.with_values(lifecycle=state)

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [status_to_msg(self.current(), self.name, self.hardware_id)]
        self._pub.publish(msg)

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        self._node.destroy_publisher(self._pub)
