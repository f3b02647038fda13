"""The bottom floor: small helpers every other room may import, and that import no room.

* :mod:`~scarls.common.validation` - number checks shared by the configuration classes.
* :mod:`~scarls.common.device` - torch devices and precisions (CPU, CUDA, MPS), batches moved
  to a module's device.
* :mod:`~scarls.common.stats` - the one percentile of every report (numpy's).
"""
