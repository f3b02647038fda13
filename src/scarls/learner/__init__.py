"""The learner's pure core: data mixing, algorithms, training, evaluation, simulated rollouts.

Nothing here imports ROS. bench/bench_learning.py runs the learning experiment in the simulator.

* :mod:`~scarls.learner.config` - frozen, validated configs (trainer, mixing, rollouts).
* :mod:`~scarls.learner.algorithms` - ``bc`` / ``hg_dagger`` as per-step label weights.
* :mod:`~scarls.learner.mixing` - SOP-style task-balanced online/offline sampler.
* :mod:`~scarls.learner.trainer` - in-memory episodes, chunk batches, masked loss, AdamW.
* :mod:`~scarls.learner.evaluation` - open-loop metric and the checkpoint gate.
* :mod:`~scarls.learner.demos` - scripted-expert demonstrations written as episodes.
* :mod:`~scarls.learner.rollout` - the policy alone or in the ECU loop, in the simulator.
"""

from __future__ import annotations

from scarls.learner.algorithms import (
    SOURCES,
    Algorithm,
    BehaviourCloning,
    DuplicateAlgorithm,
    HGDagger,
    UnknownAlgorithm,
    available_algorithms,
    make_algorithm,
    register_algorithm,
)
from scarls.learner.config import (
    LearnerConfigError,
    LearnerError,
    MixingConfig,
    RolloutConfig,
    TrainerConfig,
)
from scarls.learner.demos import generate_demos, record_expert_episode
from scarls.learner.evaluation import (
    CheckpointGate,
    GateDecision,
    OpenLoopResult,
    evaluate_open_loop,
    open_loop_batches,
)
from scarls.learner.mixing import BUFFER_KINDS, BufferKey, MixingSampler, Sample
from scarls.learner.rollout import (
    ECU_GATE_CONFIG,
    EpisodeResult,
    HGDaggerEpisode,
    RolloutStats,
    SyncChunkedController,
    evaluate_closed_loop,
    policy_cameras,
    run_hg_dagger_episode,
    run_policy_episode,
)
from scarls.learner.trainer import (
    MASK_KEY,
    EpisodeData,
    StepResult,
    Trainer,
    TrainStats,
    build_batch,
    chunk_targets,
    fit_normalization,
    masked_chunk_loss,
)

__all__ = [
    'BUFFER_KINDS',
    'ECU_GATE_CONFIG',
    'MASK_KEY',
    'SOURCES',
    'Algorithm',
    'BehaviourCloning',
    'BufferKey',
    'CheckpointGate',
    'DuplicateAlgorithm',
    'EpisodeData',
    'EpisodeResult',
    'GateDecision',
    'HGDagger',
    'HGDaggerEpisode',
    'LearnerConfigError',
    'LearnerError',
    'MixingConfig',
    'MixingSampler',
    'OpenLoopResult',
    'RolloutConfig',
    'RolloutStats',
    'Sample',
    'StepResult',
    'SyncChunkedController',
    'TrainStats',
    'Trainer',
    'TrainerConfig',
    'UnknownAlgorithm',
    'available_algorithms',
    'build_batch',
    'chunk_targets',
    'evaluate_closed_loop',
    'evaluate_open_loop',
    'fit_normalization',
    'generate_demos',
    'make_algorithm',
    'masked_chunk_loss',
    'open_loop_batches',
    'policy_cameras',
    'record_expert_episode',
    'register_algorithm',
    'run_hg_dagger_episode',
    'run_policy_episode',
]
