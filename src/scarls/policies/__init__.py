"""Policy plug-ins: the interface the learner trains and the actor deploys.

Built-in policies (registered on import):

* ``'mlp'`` - state-only MLP (:mod:`scarls.policies.mlp`).
* ``'cnn'`` - small CNN over the three cameras + state (:mod:`scarls.policies.cnn`).

To add a policy (e.g. an ACT-style transformer, planned as ``scarls.policies.act``), write a
module with a frozen :class:`PolicyConfig` subclass and a :class:`Policy` subclass decorated
with ``@register_policy('<name>')``, and import it below so it registers on import.
"""

from __future__ import annotations

from scarls.policies.act import ACTConfig, ACTPolicy  # noqa: F401 (registers 'act')
from scarls.policies.base import (
    ACTION_KEY,
    CAMERAS,
    IMAGE_KEY_PREFIX,
    NUM_JOINTS,
    STATE_KEY,
    DuplicatePolicy,
    Observation,
    Policy,
    PolicyConfig,
    PolicyConfigError,
    UnknownPolicy,
    available_policies,
    get_policy_class,
    image_key,
    make_policy,
    observation_to_batch,
    register_policy,
)
from scarls.policies.cnn import CNNConfig, CNNPolicy
from scarls.policies.mlp import MLPConfig, MLPPolicy
from scarls.policies.spatial import SpatialConfig, SpatialPolicy  # noqa: F401 - registers it

# Future: from scarls.policies.act import ACTConfig, ACTPolicy

__all__ = [
    'ACTION_KEY',
    'CAMERAS',
    'IMAGE_KEY_PREFIX',
    'NUM_JOINTS',
    'STATE_KEY',
    'CNNConfig',
    'CNNPolicy',
    'DuplicatePolicy',
    'MLPConfig',
    'MLPPolicy',
    'Observation',
    'Policy',
    'PolicyConfig',
    'PolicyConfigError',
    'UnknownPolicy',
    'available_policies',
    'get_policy_class',
    'image_key',
    'make_policy',
    'observation_to_batch',
    'register_policy',
]
