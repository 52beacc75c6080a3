"""Reading a photo at a size the model accepts (toys: short side to 32 and centre crop)."""

from __future__ import annotations

import os

from torch import Tensor

__all__ = ["load_model_image"]


def load_model_image(path: str | os.PathLike, model: object) -> Tensor:
    """``(1, 3, H, W)`` in [0, 1]. Toy models get the short side resized to 32 and a centre crop (the toy world's
    size); real models take the photo as it is and raise a clear error if its sides do not suit the model."""
    from flowcore.images import to_tensor
    from style_attr.dataset import load_content_image

    if getattr(model, "is_toy", False):
        return load_content_image(path, 32)[None]
    image = to_tensor(path).float()
    model.check_size(*image.shape[-2:])  # type: ignore[attr-defined]
    return image
