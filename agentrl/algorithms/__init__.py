"""agentrl.algorithms: advantages, step-level credit and the entropy-control methods, pure torch.

Components live in one registry per kind (:data:`REGISTRIES`); configs name them. The learner
uses :func:`build_algorithm` and the two-phase :class:`Algorithm` API (see
:mod:`agentrl.algorithms.algorithm` and docs/add_method.md). This package imports only torch
(PyYAML is imported lazily by :func:`load_algorithm_config`).
"""

from . import aggregation, controllers, estimators, kl, losses, shaping, token_masks  # noqa: F401  (registration)
from .aggregation import make_aggregate
from .algorithm import AdvantageResult, Algorithm, MicroBatch, RolloutBatch, StepResult, build_algorithm
from .config import (AlgorithmConfig, ComponentSpec, CreditConfig, DynamicSamplingConfig, KLConfig, OffPolicyConfig,
                     OverlongConfig, load_algorithm_config)
from .controllers import (BAPOController, Controller, ControllerOutput, EntroPICController, LossView,
                          ProRLController, SkyworkEntropyController, StepStats)
from .credit import (broadcast_turns, default_turn_ids, discounted_turn_returns, place_on_last_turn, turn_means,
                     turn_token_counts)
from .estimators import EstimatorOutput
from .kl import kl_estimate
from .logits import logprobs_and_entropy_from_hidden, logprobs_and_entropy_from_logits
from .registry import (AGGREGATIONS, CONTROLLERS, ESTIMATORS, KL_ESTIMATORS, LOSSES, REGISTRIES, SHAPING, TOKEN_MASKS,
                       Registry, UnknownNameError)
from .sampling import dynamic_sampling_keep, overlong_penalty

__all__ = [
    "AGGREGATIONS", "CONTROLLERS", "ESTIMATORS", "KL_ESTIMATORS", "LOSSES", "REGISTRIES", "SHAPING", "TOKEN_MASKS",
    "Registry", "UnknownNameError",
    "AlgorithmConfig", "ComponentSpec", "CreditConfig", "DynamicSamplingConfig", "KLConfig", "OffPolicyConfig",
    "OverlongConfig", "load_algorithm_config",
    "Algorithm", "AdvantageResult", "MicroBatch", "RolloutBatch", "StepResult", "build_algorithm",
    "Controller", "ControllerOutput", "LossView", "StepStats",
    "BAPOController", "EntroPICController", "SkyworkEntropyController", "ProRLController",
    "EstimatorOutput", "make_aggregate", "kl_estimate",
    "broadcast_turns", "default_turn_ids", "discounted_turn_returns", "place_on_last_turn", "turn_means",
    "turn_token_counts",
    "logprobs_and_entropy_from_hidden", "logprobs_and_entropy_from_logits",
    "dynamic_sampling_keep", "overlong_penalty",
]
