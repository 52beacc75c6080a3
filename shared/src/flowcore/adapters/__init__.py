"""Model adapters (architecture §3.2): one :class:`FlowModel` per model family."""

from flowcore.adapters.base import Conditioning, ControlInput, FlowModel, gate_residual
from flowcore.adapters.families import FluxKontextModel, FluxModel, QwenImageEditModel, SD3Model, UNetModel
from flowcore.adapters.loading import (
    ModelNotFoundError,
    adapter_class_for,
    adapter_from_pipe,
    adapter_from_toy,
    load_model,
)

__all__ = [
    "Conditioning",
    "ControlInput",
    "FlowModel",
    "FluxKontextModel",
    "FluxModel",
    "ModelNotFoundError",
    "QwenImageEditModel",
    "SD3Model",
    "UNetModel",
    "adapter_class_for",
    "adapter_from_pipe",
    "adapter_from_toy",
    "gate_residual",
    "load_model",
]
