"""scarls: a ROS 2 middleware that lets a fleet of robot arms learn while they work."""

__version__ = '0.1.0'
