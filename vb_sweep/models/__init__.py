"""Models behind a registry: ``build_model(name, num_classes)``.

Every model maps a float batch (normalised images) to logits with ``model(x)`` and offers
``model.forward_with_features(x) -> (logits, feature_map)`` where ``feature_map`` is the output
of its last convolutional block (B, C, h, w) — what AttentionMix's attention is computed from.
"""

from vb_sweep.models.registry import MODELS, build_model

# Part of the cache key of every artifact a model is trained for (Victim trajectories, the
# trained attacks' networks): bump when a model's architecture or initialisation changes.
# 2: the ResNets' convolutions Kaiming-normal (fan_out), as in the authors' code.
MODELS_VERSION = 2

__all__ = ["MODELS", "MODELS_VERSION", "build_model"]
