"""Qwen-Image-Edit: ``hidden_states = [target; reference]``, geometry in ``img_shapes``, centred integer RoPE.

Mixed calls pass synthetic ``img_shapes=[[(1, 1, N_target), (1, 1, N_reference)]]`` (so ``zero_cond_t`` builds the
right ``modulate_index``) and activate the float-position rotary wrapper, which ignores ``img_shapes``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from specedit.families.base import CallGeometry, Family
from specedit.layout import CallPlan, Grid
from specedit.rope_qwen import FloatPositionRope, QwenPositions

__all__ = ["QwenImageEditFamily"]


def _shapes(kw: dict[str, Any]) -> list:
    shapes = kw.get("img_shapes")
    if not shapes:
        raise ValueError("Qwen-Image calls need img_shapes; specedit reads the token grids from them")
    first = shapes[0]
    if isinstance(first, tuple) and len(first) == 3 and all(isinstance(v, int) for v in first):
        first = [first]
    return list(first)


class QwenImageEditFamily(Family):
    name = "qwen_image_edit"
    text_key = "encoder_hidden_states"
    attention_kwargs_key = "attention_kwargs"

    def parse(self, module: nn.Module, kw: dict[str, Any]) -> CallGeometry:
        hidden = kw["hidden_states"]
        shapes = _shapes(kw)
        if len(shapes) > 2:
            raise NotImplementedError("several reference images are not supported in v1 (spec §10)")
        for f, _, _ in shapes:
            if f != 1:
                raise ValueError("specedit supports single-frame Qwen images only")
        target = Grid(int(shapes[0][1]), int(shapes[0][2]))
        reference = Grid(int(shapes[1][1]), int(shapes[1][2])) if len(shapes) > 1 else None
        n_img = target.n_tokens + (reference.n_tokens if reference else 0)
        if hidden.shape[1] != n_img:
            raise ValueError(f"hidden_states has {hidden.shape[1]} rows but img_shapes describe {n_img}")
        return CallGeometry(target, reference, int(kw["encoder_hidden_states"].shape[1]), self.sigma_of(kw),
                            int(hidden.shape[0]))

    @staticmethod
    def positions(plan: CallPlan) -> QwenPositions:
        parts = [QwenPositions.centred(plan.target.positions, 0, plan.target.frame_grid)]
        grids = [plan.target.frame_grid]
        if plan.reference is not None:
            parts.append(QwenPositions.centred(plan.reference.positions, 1, plan.reference.frame_grid))
            grids.append(plan.reference.frame_grid)
        text_start = max(max(gh // 2, gw // 2) for gh, gw in grids)
        return QwenPositions(torch.cat(parts), float(text_start))

    def main_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, plan: CallPlan,
                    geometry: CallGeometry) -> dict[str, Any]:
        new = dict(kw)
        new["hidden_states"] = hidden
        shape = [(1, 1, plan.n_target)] + ([(1, 1, plan.n_reference)] if plan.reference is not None else [])
        new["img_shapes"] = [shape] * geometry.batch
        return new

    def activate(self, module: nn.Module, plan: CallPlan | None, geometry: CallGeometry) -> None:
        rope = getattr(module, "pos_embed", None)
        if not isinstance(rope, FloatPositionRope):
            if plan is None:
                return
            raise RuntimeError("the Qwen transformer's pos_embed is not specedit's float rotary (apply_specedit "
                               "installs it); was it replaced after apply_specedit?")
        if plan is None:
            rope.active = None
            return
        cache = plan.__dict__.setdefault("_qwen_positions", None)
        if cache is None:
            cache = self.positions(plan)
            object.__setattr__(plan, "_qwen_positions", cache)
        rope.active = cache

    def draft_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, target: Grid,
                     reference: Grid, timestep: Tensor, branch: dict[str, Any] | None) -> dict[str, Any]:
        new = dict(kw)
        new.update(branch or {})
        new["hidden_states"] = hidden
        new["timestep"] = timestep
        new["img_shapes"] = [[(1, target.h, target.w), (1, reference.h, reference.w)]] * int(hidden.shape[0])
        return new

    def to_vae_space(self, latents: Tensor, vae: nn.Module | None) -> Tensor:
        if vae is None:
            return latents
        cfg = vae.config
        z_dim = latents.shape[1]
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1).to(latents.device)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1).to(latents.device)
        return (latents.float() * std + mean)[:, :, None]
