"""Models of method.md section 2: ResNet/IBN-ResNet backbones, pooling, the embedding head, checkpoint I/O."""

from dsgl_cli.models.backbones import ARCHITECTURES, build_backbone, infer_architecture
from dsgl_cli.models.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from dsgl_cli.models.pooling import POOLINGS, GeneralizedMeanPooling, build_pooling
from dsgl_cli.models.reid import ModelSpec, ReIDModel, build_model

__all__ = [
    "ARCHITECTURES",
    "POOLINGS",
    "GeneralizedMeanPooling",
    "ModelSpec",
    "ReIDModel",
    "build_backbone",
    "build_model",
    "build_pooling",
    "capture_rng_state",
    "infer_architecture",
    "load_checkpoint",
    "load_model",
    "make_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]
