"""The prompt-level baseline (the paper's "λ in the prompt" ablation, §2.4).

λ is quantised to five levels, ``min(4, ⌊5λ⌋)``, and each parameter's level becomes a learned token appended to the
ControlNet's text sequence. The baseline owns a copy of the ControlNet whose text cross-attention keys and values
train together with the level tokens (UNet: ``attn2.to_k/to_v``; SD3: ``attn.add_k_proj/add_v_proj``); the rest is
frozen. Data, loss, steps and the guidance composition are those of the attribute network, so the two are compared
on equal terms (the §6 smoothness metric).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowcore.adapters import Conditioning, ControlInput
from flowcore.guidance import cfg, compose, gate
from flowcore.sampling import sample as flow_sample
from flowcore.seeding import seeded_init
from style_attr.filters import AttributeSpec
from style_attr.network import host_of

__all__ = ["PromptLevelBaseline", "baseline_sample"]

LEVELS = 5
CONFIG = "baseline_config.json"
WEIGHTS = "baseline_tokens.safetensors"


def _plain_copy(controlnet: nn.Module) -> nn.Module:
    """A deep copy of ``controlnet`` without style-attr λ-processors."""
    host = host_of(controlnet)
    if host is not None:
        host.uninstall()
    try:
        clone = copy.deepcopy(controlnet)
    finally:
        if host is not None:
            host.reinstall()
    if "_style_attr_host" in clone.__dict__:
        del clone.__dict__["_style_attr_host"]
    if "_flowcore_handles" in clone.__dict__:
        del clone.__dict__["_flowcore_handles"]
    return clone


def _text_kv(controlnet: nn.Module) -> list[nn.Module]:
    mods: list[nn.Module] = []
    for name, module in controlnet.named_modules():
        if name.endswith("attn2") and hasattr(module, "to_k"):
            mods += [module.to_k, module.to_v]
        elif name.endswith(".attn") and getattr(module, "add_k_proj", None) is not None:
            mods += [module.add_k_proj, module.add_v_proj]
    return mods


def _text_width(controlnet: nn.Module) -> int:
    cfg_ = controlnet.config
    dim = getattr(cfg_, "cross_attention_dim", None) or getattr(cfg_, "joint_attention_dim", None)
    if not isinstance(dim, int):
        raise ValueError("the prompt-level baseline needs a ControlNet that reads text (one text width)")
    return int(dim)


class PromptLevelBaseline(nn.Module):
    """Learned level tokens ``(P, 5, d)`` appended to the ControlNet text, plus its own ControlNet copy."""

    def __init__(self, controlnet: nn.Module, spec: AttributeSpec, text_dim: int):
        super().__init__()
        self.controlnet = controlnet
        self.spec = spec
        self.level_tokens = nn.Parameter(torch.randn(spec.num_params, LEVELS, text_dim) * 0.02)
        self.training_summary: dict[str, Any] = {}
        self.freeze()

    @classmethod
    def create(cls, controlnet: nn.Module, spec: AttributeSpec, *, seed: int = 0) -> PromptLevelBaseline:
        with seeded_init(seed):
            return cls(_plain_copy(controlnet), spec, _text_width(controlnet))

    def freeze(self) -> None:
        """Train only the level tokens and the ControlNet's text keys/values."""
        self.controlnet.requires_grad_(False)
        modules = _text_kv(self.controlnet)
        if not modules:
            raise ValueError(f"{type(self.controlnet).__name__} has no text cross-attention keys/values to train")
        for m in modules:
            m.requires_grad_(True)
        self.level_tokens.requires_grad_(True)

    @staticmethod
    def levels(lam: Tensor) -> Tensor:
        """``min(4, ⌊5λ⌋)`` per entry (negative λ is level 0)."""
        return torch.clamp(torch.floor(lam * LEVELS), 0, LEVELS - 1).long()

    def control_cond(self, cond: Conditioning, lam: Tensor) -> Conditioning:
        """The ControlNet text: the prompt rows followed by one level token per parameter."""
        lam = lam.to(self.level_tokens.device)
        if lam.ndim == 1:
            lam = lam[None].expand(len(cond), -1)
        lv = self.levels(lam)                                         # (B, P)
        p_index = torch.arange(self.spec.num_params, device=lv.device)[None].expand_as(lv)
        tokens = self.level_tokens[p_index, lv].to(cond.embeds.dtype)  # (B, P, d)
        embeds = torch.cat([cond.embeds, tokens.to(cond.embeds.device)], dim=1)
        return Conditioning(embeds, cond.pooled, None, cond.text_ids, dict(cond.extra), cond.prompts)

    def predict_rows(self, model: Any, z: Tensor, t: Tensor | float, cond: Conditioning, edges: Tensor,
                     lam: Tensor) -> Tensor:
        control = ControlInput(image=edges, controlnet=self.controlnet, cond=self.control_cond(cond, lam))
        return model.predict(z, t, cond, control=control)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        from flowcore.io import atomic_write, write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.controlnet.save_pretrained(str(path / "controlnet"), safe_serialization=True)
        tokens = {"level_tokens": self.level_tokens.detach().cpu().contiguous()}
        atomic_write(path / WEIGHTS, lambda tmp: save_file(tokens, str(tmp)))
        write_json(path / CONFIG, {"format": "style-attr/prompt-level-baseline", "spec": self.spec.to_dict(),
                                   "levels": LEVELS, "controlnet_class": type(self.controlnet).__name__,
                                   "training": self.training_summary})
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None) -> PromptLevelBaseline:
        import diffusers
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path} is not a prompt-level baseline (no {CONFIG}); train one with "
                                    "`style-attr train --baseline prompt-level`")
        meta = json.loads((path / CONFIG).read_text())
        controlnet = getattr(diffusers, meta["controlnet_class"]).from_pretrained(str(path / "controlnet"),
                                                                                  torch_dtype=torch_dtype)
        net = cls(controlnet, AttributeSpec.from_dict(meta["spec"]), _text_width(controlnet))
        with torch.no_grad():
            net.level_tokens.copy_(load_file(str(path / WEIGHTS))["level_tokens"])
        net.requires_grad_(False)
        return net


def baseline_predictor(model: Any, baseline: PromptLevelBaseline, cond: Conditioning, uncond: Conditioning, *,
                       w1: float, lam: Tensor, lam_ref: Tensor, scale: float, act_t: float, edges: Tensor
                       ) -> Callable[[Tensor, int], Tensor]:
    """The §2.5 composition with the baseline's prediction difference (base rows: the plain ControlNet)."""

    def predict(x: Tensor, i: int) -> Tensor:
        from flowcore.sampling import current_loop
        from style_attr.composition import RowBlock, call_blocks

        loop = current_loop()
        assert loop is not None
        sched = loop.schedule
        t = sched.t(i)
        base_out = call_blocks(model, x, t, [RowBlock(uncond), RowBlock(cond)], ControlInput(image=edges))
        base = cfg(base_out[0], base_out[1], w1)
        if scale == 0 or not gate(i, sched.num_steps, act_t) or torch.equal(lam, lam_ref):
            return base
        b = x.shape[0]
        img = edges if edges.shape[0] == b else edges.expand(b, -1, -1, -1)
        out = baseline.predict_rows(model, torch.cat([x, x]), t, Conditioning.cat([uncond, uncond]),
                                    torch.cat([img, img]), torch.cat([lam.expand(b, -1), lam_ref.expand(b, -1)]))
        pos, neg = out.chunk(2)
        return compose(base, [(scale, pos, neg)])

    predict.kind = model.prediction  # type: ignore[attr-defined]
    return predict


@torch.no_grad()
def baseline_sample(model: Any, baseline: PromptLevelBaseline, x_T: Tensor, schedule: Any, cond: Conditioning, *,
                    w1: float, lam: Tensor | float | Sequence[float], lam_ref: Tensor | float = 0.0, scale: float = 1.0,
                    act_t: float = 0.1, uncond: Conditioning | None = None, control_image: Tensor) -> Tensor:
    """Sample with the prompt-level baseline as the attribute term (same composition as :func:`sample`)."""
    p = baseline.spec.num_params
    lam_t = torch.as_tensor(lam, dtype=torch.float32).reshape(-1, p) if torch.as_tensor(lam).ndim else \
        torch.full((1, p), float(lam))
    ref_t = torch.as_tensor(lam_ref, dtype=torch.float32).reshape(-1, p) if torch.as_tensor(lam_ref).ndim else \
        torch.full((1, p), float(lam_ref))
    if not math.isfinite(float(scale)):
        raise ValueError("scale must be finite")
    uncond = uncond if uncond is not None else model.encode_prompt([""] * len(cond))
    predictor = baseline_predictor(model, baseline, cond, uncond, w1=w1, lam=lam_t, lam_ref=ref_t, scale=scale,
                                   act_t=act_t, edges=control_image)
    return flow_sample(predictor, x_T, schedule, kind=model.prediction)
