"""Test helpers: oracle transformers, a pipeline-like Euler loop and tiny real pipelines.

The oracles return ``v = (x − x̂0)/σ`` with ``x̂0`` the packed target at the resolution each token stands for, read
from its position: integer ids on the full grid → fine; half-integer ids → a coarse cell (``P_2`` of the target);
an all-integer sequence with as many tokens as the coarse grid → native coarse; a smaller grid → the draft.
Conditional rows are recognised by ``encoder_hidden_states`` filled with ones, unconditional with zeros.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope
from torch import Tensor, nn

from flowcore.schedules import calculate_shift
from specedit.ops import pack, pad_reflect, pool
from specedit.rope_qwen import FloatPositionRope

C = 4  # latent channels of the fakes


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                           max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)


class _Oracle(nn.Module):
    def __init__(self, targets: dict[str, Tensor], draft_target: Tensor | None = None, draft_factor: int = 4):
        super().__init__()
        self.targets = targets  # "c"/"u" -> (B, C, H, W)
        self.draft_target = draft_target
        self.draft_factor = draft_factor
        self.calls: list[int] = []

    def _x0(self, cond: Tensor) -> Tensor:
        key = "c" if float(cond.float().mean()) > 0.5 else "u"
        return self.targets[key if key in self.targets else "c"]

    def _predict(self, x: Tensor, rows: Tensor, cols: Tensor, x0: Tensor, sigma: float, native: bool,
                 draft: bool) -> Tensor:
        _b, _c, hh, ww = x0.shape
        h, w = hh // 2, ww // 2
        hc, wc = h // 2, w // 2
        fine = pack(x0)
        coarse = pack(pool(x0[..., : 4 * hc, : 4 * wc], 2))
        xhat = torch.empty_like(x)
        if draft:
            target = self.draft_target
            if target is None:
                padded, _ = pad_reflect(x0, 2 * self.draft_factor)
                target = pool(padded, self.draft_factor)
            wd = target.shape[-1] // 2
            idx = (rows * wd + cols).long()
            return (x - pack(target)[:, idx]) / sigma
        if native:
            return (x - coarse[:, (rows * wc + cols).long()]) / sigma
        is_int = rows == rows.round()
        fi = (rows[is_int] * w + cols[is_int]).long()
        xhat[:, is_int] = fine[:, fi]
        ci = (((rows[~is_int] - 0.5) / 2) * wc + (cols[~is_int] - 0.5) / 2).long()
        xhat[:, ~is_int] = coarse[:, ci]
        return (x - xhat) / sigma

    def _kind(self, rows: Tensor, cols: Tensor, n: int, x0: Tensor) -> tuple[bool, bool]:
        h, w = x0.shape[-2] // 2, x0.shape[-1] // 2
        integer = bool((rows == rows.round()).all() and (cols == cols.round()).all())
        native = integer and n == (h // 2) * (w // 2) and n != h * w
        draft = integer and n < h * w and not native
        return native, draft

    @staticmethod
    def _wrap(out: Tensor, return_dict: bool):
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


class OracleKontext(_Oracle):
    """Fake FLUX Kontext transformer (family override ``flux_kontext``)."""

    _specedit_family = "flux_kontext"

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, return_dict=True):
        self.calls.append(int(hidden_states.shape[1]))
        x0 = self._x0(encoder_hidden_states)
        ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        target = ids[:, 0] == 0
        n = int(target.sum())
        rows, cols = ids[target, 1].float(), ids[target, 2].float()
        native, draft = self._kind(rows, cols, n, x0)
        sigma = float(timestep.reshape(-1)[0])
        v = self._predict(hidden_states[:, :n].float(), rows, cols, x0, sigma, native, draft)
        out = torch.zeros_like(hidden_states, dtype=torch.float32)
        out[:, :n] = v
        return self._wrap(out.to(hidden_states.dtype), return_dict)


class OracleQwen(_Oracle):
    """Fake Qwen-Image transformer (family override ``qwen_image_edit``), positions from the rotary wrapper."""

    _specedit_family = "qwen_image_edit"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pos_embed = QwenEmbedRope(theta=10000, axes_dim=[8, 12, 12], scale_rope=True)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None, timestep=None,
                img_shapes=None, guidance=None, attention_kwargs=None, return_dict=True):
        self.calls.append(int(hidden_states.shape[1]))
        x0 = self._x0(encoder_hidden_states)
        h, w = x0.shape[-2] // 2, x0.shape[-1] // 2
        rope = self.pos_embed
        sigma = float(timestep.reshape(-1)[0])
        if isinstance(rope, FloatPositionRope) and rope.active is not None:
            pos = rope.active.image
            target = pos[:, 0] == 0
            n = int(target.sum())
            r, c = pos[target, 1], pos[target, 2]
            integer = bool((r == r.round()).all() and (c == c.round()).all())
            native = integer and n == (h // 2) * (w // 2) and n != h * w
            gh, gw = (h // 2, w // 2) if native else (h, w)
            rows, cols = r + (gh - gh // 2), c + (gw - gw // 2)
            draft = False
        else:
            _, th, tw = img_shapes[0][0]
            n = th * tw
            rows = torch.arange(th, dtype=torch.float32).repeat_interleave(tw)
            cols = torch.arange(tw, dtype=torch.float32).repeat(th)
            native, draft = False, n != h * w
        v = self._predict(hidden_states[:, :n].float(), rows, cols, x0, sigma, native, draft)
        out = torch.zeros_like(hidden_states, dtype=torch.float32)
        out[:, :n] = v
        return self._wrap(out.to(hidden_states.dtype), return_dict)


def flux_ids(flag: float, h: int, w: int) -> Tensor:
    ids = torch.zeros(h * w, 3)
    ids[:, 0] = flag
    ids[:, 1] = torch.arange(h, dtype=torch.float32).repeat_interleave(w)
    ids[:, 2] = torch.arange(w, dtype=torch.float32).repeat(h)
    return ids


def euler_run(transformer: nn.Module, scheduler, eps: Tensor, ref: Tensor, grid: tuple[int, int], steps: int, *,
              family: str, cfg_scale: float | None = None, callback=None, n_txt: int = 3) -> Tensor:
    """A pipeline-like loop: tokens ``eps`` ``(B, h·w, 4C)``, reference tokens ``ref``; returns the final tokens.

    ``callback(i, x_next)`` sees the latent after each step. True CFG uses the plain combination.
    """
    b, n, _d = eps.shape
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(n)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    h, w = grid
    x = eps
    cond = torch.ones(b, n_txt, 8)
    uncond = torch.zeros(b, n_txt, 8)

    def call(hidden, t, text):
        if family == "flux_kontext":
            ids = torch.cat([flux_ids(0, h, w), flux_ids(1, h, w)])
            return transformer(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=text[:, 0],
                               timestep=t, img_ids=ids, txt_ids=torch.zeros(n_txt, 3), guidance=torch.full((b,), 2.5),
                               return_dict=False)[0]
        return transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=t,
                           img_shapes=[[(1, h, w), (1, h, w)]] * b, return_dict=False)[0]

    for i, t in enumerate(scheduler.timesteps):
        hidden = torch.cat([x, ref], dim=1)
        ts = t.expand(b).to(x.dtype) / 1000
        pred = call(hidden, ts, cond)[:, :n]
        if cfg_scale is not None:
            neg = call(hidden, ts, uncond)[:, :n]
            pred = neg + cfg_scale * (pred - neg)
        x = scheduler.step(pred, t, x, return_dict=False)[0]
        if callback is not None:
            callback(i, x)
    return x


# ------------------------------------------------------------------------------------------ tiny pipelines
KONTEXT_SIZE = 128  # 16×16 latents, 8×8 tokens, 4×4 cells
QWEN_SIZE = 64


def tiny_kontext_transformer(seed: int = 0):
    from flowcore.testing import tiny_flux

    return tiny_flux(kontext=True, seed=seed, num_attention_heads=4, attention_head_dim=32,
                     axes_dims_rope=(8, 12, 12))


def kontext_pipe(seed: int = 0):
    from flowcore.testing import tiny_pipeline

    return tiny_pipeline("flux-kontext", seed=seed, transformer=tiny_kontext_transformer(seed))


def qwen_pipe(seed: int = 0, zero_cond_t: bool = False):
    from flowcore.testing import tiny_pipeline, tiny_qwen_image_edit

    transformer = tiny_qwen_image_edit(seed=seed, num_attention_heads=2, attention_head_dim=32,
                                       axes_dims_rope=(8, 12, 12), zero_cond_t=zero_cond_t)
    return tiny_pipeline("qwen-image-edit", seed=seed, transformer=transformer)


def kontext_latent_image(size: int = KONTEXT_SIZE, seed: int = 3) -> Tensor:
    """A reference given as 4-channel latents (the stock pipeline uses it as is: no VAE encode)."""
    return torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))


def kontext_call(pipe, *, steps: int = 6, cfg: bool = False, seed: int = 0, image=None, size: int = KONTEXT_SIZE,
                 generator=None, **kw):
    extra = {"negative_prompt": "blurry", "true_cfg_scale": 3.0} if cfg else {}
    image = kontext_latent_image(size) if image is None else image
    return pipe(image=image, prompt="make it red", num_inference_steps=steps, guidance_scale=2.5, height=size,
                width=size, max_area=size * size, _auto_resize=False,
                generator=generator or torch.Generator().manual_seed(seed), output_type="latent",
                max_sequence_length=16, **extra, **kw)


def qwen_image(size: int = QWEN_SIZE):
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def qwen_call(pipe, *, steps: int = 4, seed: int = 0, generator=None, **kw):
    from flowcore.testing import qwen_edit_resolution

    with qwen_edit_resolution(QWEN_SIZE * QWEN_SIZE):
        return pipe(image=qwen_image(), prompt="make it blue", negative_prompt="", true_cfg_scale=4.0,
                    num_inference_steps=steps, height=QWEN_SIZE, width=QWEN_SIZE,
                    generator=generator or torch.Generator().manual_seed(seed), output_type="latent", **kw)


class TokenCounter:
    """Counts every network call (draft included) through the input embedder, with its image-token count."""

    def __init__(self, transformer):
        layer = getattr(transformer, "x_embedder", None) or transformer.img_in
        self.tokens: list[int] = []
        self.handle = layer.register_forward_pre_hook(lambda m, a: self.tokens.append(int(a[0].shape[1])))

    def remove(self):
        self.handle.remove()
