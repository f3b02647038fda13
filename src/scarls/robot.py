"""The robot layout every room agrees on: a dual-arm robot (ARX AcOne / Agibot class).

14 joints in this order: left arm joints 1-6, left gripper, right arm joints 1-6, right gripper
(grippers normalised 0 = closed .. 1 = open); three RGB cameras: top, left, right.
"""

from __future__ import annotations

ARM_DOF = 6
JOINT_NAMES: tuple[str, ...] = (
    *(f'left_joint{i}' for i in range(1, ARM_DOF + 1)), 'left_gripper',
    *(f'right_joint{i}' for i in range(1, ARM_DOF + 1)), 'right_gripper',
)
NUM_JOINTS = len(JOINT_NAMES)
CAMERAS: tuple[str, ...] = ('top', 'left', 'right')
LEFT_ARM = slice(0, ARM_DOF)
LEFT_GRIPPER = ARM_DOF
RIGHT_ARM = slice(ARM_DOF + 1, 2 * ARM_DOF + 1)
RIGHT_GRIPPER = 2 * ARM_DOF + 1
