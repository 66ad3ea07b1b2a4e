"""Models behind a registry: ``build_model(name, num_classes)``.

Every model maps a float batch (normalised images) to logits with ``model(x)`` and offers
``model.forward_with_features(x) -> (logits, feature_map)`` where ``feature_map`` is the output
of its last convolutional block (B, C, h, w) — what AttentionMix's attention is computed from.
"""

from vb_sweep.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
