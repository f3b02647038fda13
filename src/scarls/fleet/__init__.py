"""The fleet: ECUs that learn one policy by a metric-weighted all-reduce of their parameters.

Nothing here imports ROS or the learner (the learner builds on the fleet: its selector, the
second open-loop test before a deploy, is :mod:`scarls.learner.selector`); importing the
package does not import torch (the names below load their module on first use).

* :mod:`~scarls.fleet.weights` - open-loop errors -> reduction weights (normalised inverse
  error over the ECUs that pass the threshold). Pure Python.
* :mod:`~scarls.fleet.allreduce` - :class:`FleetReducer`: one round of rendezvous (TCPStore,
  torchrun variables), membership with deadlines, and the all-reduce of the trainable
  parameters over torch.distributed (Gloo / NCCL).
* :mod:`~scarls.fleet.config` - :class:`FleetConfig`, :class:`Rendezvous` (the torchrun
  variables), :class:`RoundResult`, the errors.
* :mod:`~scarls.fleet.params` - what travels: the trainable parameters flattened per dtype,
  the backend and device of a round, the check of a reduced result.
* :mod:`~scarls.fleet.rendezvous` - :func:`serve_rendezvous` hosts the store.
* :mod:`~scarls.fleet.auth` - :class:`FleetKey`: the fleet's shared secret; every store record
  is sealed with HMAC-SHA256 and verified by its readers.

Per round, on every ECU's learner (``selector``: a
:class:`scarls.learner.selector.CheckpointSelector`)::

    result = reducer.reduce(policy, metric=local_eval.mse)
    if result.status in ('reduced', 'alone'):
        # every participant exchanges its verdict and takes the same decision
        selection = selector.select_fleet(policy, heldout, reducer, result,
                                          reference_metric=deployed_metric)
        if selection.approved:
            ...  # publish the checkpoint
"""

from __future__ import annotations

import importlib
from typing import Any

from scarls.fleet.weights import DEFAULT_EPS, cap_weights, passes_threshold, reduction_weights

_LAZY = {
    'BACKENDS': 'config',
    'STATUSES': 'config',
    'FleetConfig': 'config',
    'FleetConfigError': 'config',
    'FleetError': 'config',
    'Rendezvous': 'config',
    'RoundResult': 'config',
    'FleetReducer': 'allreduce',
    'RendezvousHost': 'rendezvous',
    'listen_socket': 'rendezvous',
    'serve_rendezvous': 'rendezvous',
    'check_reduced': 'params',
    'flatten_trainable': 'params',
    'parameter_signature': 'params',
    'state_bytes': 'params',
    'trainable_parameters': 'params',
    'FleetKey': 'auth',
    'FleetKeyError': 'auth',
    'KEY_ENV': 'auth',
    'KEY_FILE_ENV': 'auth',
    'SignedStore': 'auth',
    'write_key_file': 'auth',
}

__all__ = ['DEFAULT_EPS', 'cap_weights', 'passes_threshold', 'reduction_weights', *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
