"""rosbag2 bags (MCAP, SQLite 3) for scarls: record, play, repair, and conversions to and from
Zarr episodes. Built on the rosbags library; compatible with `ros2 bag` and Foxglove.

- :mod:`scarls.bags.types`: message definitions and type hashes from the installed .msg files
- :mod:`scarls.bags.io`: bag writer/reader, repair of bags whose recorder was killed
- :mod:`scarls.bags.record`, :mod:`scarls.bags.play`: the ROS side (rclpy, raw bytes)
- :mod:`scarls.bags.convert`: bag -> episodes (the scheduler's alignment), episodes -> bag

The command line is :mod:`scarls.cli.bag`; user documentation in docs/BAGS.md.
"""

from scarls.bags.errors import BagError

__all__ = ['BagError']
