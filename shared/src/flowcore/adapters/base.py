"""The model-adapter contract: :class:`FlowModel`, :class:`Conditioning` and :class:`ControlInput`.

A method never talks to a raw diffusers class; it talks to a :class:`FlowModel`, which knows how to encode prompts
and images, how to call the network for a batch of rows (packing, position ids, reference tokens, ControlNet
residuals, IP-Adapter image tokens) and what the joint token sequence looks like. CFG is never applied inside
``predict``: :func:`flowcore.guidance.guided` batches the rows and combines them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowcore.attention import CallContext, installed
from flowcore.layout import TokenLayout
from flowcore.schedules import Schedule, make_schedule

__all__ = ["Conditioning", "ControlInput", "FlowModel"]


# --- conditioning ----------------------------------------------------------------------------------------------
@dataclass
class Conditioning:
    """Encoded prompt rows.

    Attributes:
        embeds: (B, S, D) sequence embeddings (SD3 joint CLIP+T5, FLUX T5, UNet CLIP, toy sequence).
        pooled: (B, P) pooled embeddings or ``None`` (SD1.5, Qwen).
        mask: (B, S) text attention mask or ``None`` (Qwen uses it; FLUX/SD3 attend to padding).
        text_ids: (S, 3) FLUX text position ids, shared by all rows.
        extra: further per-row tensors (first dimension B), e.g. SDXL's ``time_ids``.
        prompts: the prompt strings, when known.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None
    text_ids: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    prompts: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def _rows(self, t: Tensor | None, rows: Any) -> Tensor | None:
        return None if t is None else t[rows]

    def __getitem__(self, rows: int | slice | Sequence[int] | Tensor) -> Conditioning:
        """Select rows (an int keeps the batch dimension)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        if isinstance(rows, (list, tuple)):
            rows = torch.as_tensor(rows, dtype=torch.long)
        prompts = None
        if self.prompts is not None:
            idx = range(len(self))[rows] if isinstance(rows, slice) else torch.as_tensor(rows).tolist()
            if isinstance(idx, int):
                idx = [idx]
            if isinstance(rows, Tensor) and rows.dtype == torch.bool:
                idx = [i for i, keep in enumerate(rows.tolist()) if keep]
            prompts = tuple(self.prompts[i] for i in idx)
        return Conditioning(
            embeds=self.embeds[rows],
            pooled=self._rows(self.pooled, rows),
            mask=self._rows(self.mask, rows),
            text_ids=self.text_ids,
            extra={k: v[rows] for k, v in self.extra.items()},
            prompts=prompts,
        )

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Stack rows of several conditionings (sequence lengths must agree unless masks allow padding)."""
        items = list(items)
        if not items:
            raise ValueError("Conditioning.cat needs at least one item")
        lengths = {c.embeds.shape[1] for c in items}
        if len(lengths) > 1:
            if any(c.mask is None for c in items):
                raise ValueError(f"cannot stack conditionings with sequence lengths {sorted(lengths)} and no masks")
            items = [c.pad_to(max(lengths)) for c in items]

        def cat_opt(ts: list[Tensor | None], what: str) -> Tensor | None:
            if all(t is None for t in ts):
                return None
            if any(t is None for t in ts):
                raise ValueError(f"some conditionings have {what} and some do not")
            return torch.cat(ts, dim=0)  # type: ignore[arg-type]

        keys = set(items[0].extra)
        if any(set(c.extra) != keys for c in items):
            raise ValueError("conditionings carry different extra fields")
        prompts = None
        if all(c.prompts is not None for c in items):
            prompts = tuple(p for c in items for p in c.prompts)  # type: ignore[union-attr]
        return Conditioning(
            embeds=torch.cat([c.embeds for c in items], dim=0),
            pooled=cat_opt([c.pooled for c in items], "pooled embeddings"),
            mask=cat_opt([c.mask for c in items], "masks"),
            text_ids=items[0].text_ids,
            extra={k: torch.cat([c.extra[k] for c in items], dim=0) for k in keys},
            prompts=prompts,
        )

    def pad_to(self, length: int) -> Conditioning:
        """Zero-pad the sequence (and its mask) to ``length`` tokens."""
        pad = length - self.embeds.shape[1]
        if pad <= 0:
            return self
        mask = self.mask if self.mask is not None else torch.ones(self.embeds.shape[:2], device=self.embeds.device)
        return dataclasses.replace(self, embeds=F.pad(self.embeds, (0, 0, 0, pad)), mask=F.pad(mask, (0, pad)))

    def repeat(self, n: int) -> Conditioning:
        """Each row repeated ``n`` times in a row (``[a, a, b, b]`` for n=2)."""
        idx = torch.arange(len(self)).repeat_interleave(n)
        return self[idx]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move tensors; ``dtype`` applies to floating-point tensors only (masks and ids keep theirs)."""

        def mv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else t.dtype)

        return Conditioning(mv(self.embeds), mv(self.pooled), None if self.mask is None else self.mask.to(device),
                            self.text_ids if self.text_ids is None else self.text_ids.to(device),
                            {k: mv(v) for k, v in self.extra.items()}, self.prompts)  # type: ignore[misc]


# --- ControlNet input --------------------------------------------------------------------------------------------
@dataclass
class ControlInput:
    """The ControlNet input of one ``predict`` call.

    Attributes:
        image: control images (B or 1, 3, H, W) in [0, 1] at the image resolution (edges, depth, sketches).
        scale: conditioning scale, a float or per row (B,).
        rows: rows that get the ControlNet, a (B,) bool mask or row indices; the others get zero residuals and
            the ControlNet runs on the selected rows only.
        cond: the ControlNet's own text rows (default: the call's conditioning).
        residual_gate: multiplies every residual, per row (B,) or spatially (B, 1, H, W) (resized per residual).
        residuals: precomputed residuals (skip running the ControlNet), as the adapter returns them.
        controlnet: a ControlNet to use instead of the adapter's own (e.g. a parameter-conditioned one).
        kwargs: extra keyword arguments for the ControlNet call (e.g. ``cross_attention_kwargs``).
    """

    image: Tensor | None = None
    scale: float | Tensor = 1.0
    rows: Tensor | None = None
    cond: Conditioning | None = None
    residual_gate: Tensor | None = None
    residuals: object | None = None
    controlnet: nn.Module | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def row_index(self, n: int, device: torch.device) -> Tensor:
        """The selected rows as indices into a batch of ``n``."""
        if self.rows is None:
            return torch.arange(n, device=device)
        rows = self.rows.to(device)
        return rows.nonzero().flatten() if rows.dtype == torch.bool else rows.long()


def gate_residual(res: Tensor, scale: float | Tensor, gate: Tensor | None) -> Tensor:
    """Scale one ControlNet residual per row and/or by a spatial gate resized to its grid."""
    out = res
    if isinstance(scale, Tensor):
        out = out * scale.to(res.device, res.dtype).view(-1, *([1] * (res.ndim - 1)))
    elif scale != 1.0:
        out = out * scale
    if gate is not None:
        g = gate.to(res.device, res.dtype)
        if g.ndim == 1:
            g = g.view(-1, *([1] * (res.ndim - 1)))
        elif res.ndim == 4 and g.shape[-2:] != res.shape[-2:]:
            g = F.interpolate(g, size=res.shape[-2:], mode="area")
        out = out * g
    return out


# --- the adapter ---------------------------------------------------------------------------------------------------
class FlowModel:
    """Base adapter. Subclasses: SD3Model, FluxModel, FluxKontextModel, QwenImageEditModel, UNetModel.

    Latent conventions: SD3 and UNet latents are (B, C, h, w); FLUX, Kontext and Qwen latents are packed tokens
    (B, T, 4C) as their diffusers pipelines keep them; :meth:`to_grid` / :meth:`from_grid` convert.
    """

    family: Literal["rf", "vp"] = "rf"
    prediction: Literal["flow", "eps", "v"] = "flow"
    guidance_kind: Literal["embedded", "cfg", "none"] = "cfg"
    pipeline_class: ClassVar[str] = ""

    def __init__(
        self,
        denoiser: nn.Module,
        vae: nn.Module,
        scheduler: Any,
        *,
        prompt_encoder: Callable[..., Conditioning],
        model_id: str = "",
        is_toy: bool = False,
        pipe: Any = None,
        controlnet: nn.Module | None = None,
        image_encoder: Callable[[Tensor], Tensor] | None = None,
        tokenizer: Any = None,
    ):
        self.denoiser = denoiser
        self.vae = vae
        self.scheduler = scheduler
        self.prompt_encoder = prompt_encoder
        self.model_id = model_id
        self.is_toy = is_toy
        self.pipe = pipe
        self.controlnet = controlnet
        self.image_encoder = image_encoder
        self.tokenizer = tokenizer
        self._bound: dict[str, Any] = {}
        vsf = getattr(pipe, "vae_scale_factor", None)
        self.vae_scale_factor = int(vsf) if vsf else 2 ** (len(vae.config.block_out_channels) - 1)

    # identity ----------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def patch_size(self) -> int:
        return int(getattr(self.denoiser.config, "patch_size", 1) or 1)

    @property
    def pad_multiple(self) -> int:
        """Image sides must be multiples of this (pad with :func:`flowcore.images.pad_to_multiple`)."""
        return self.vae_scale_factor * self.patch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={self.device}, dtype={self.dtype})"

    # construction ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, *, torch_dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None, **components: Any) -> FlowModel:
        """Load a toy name, a hub id or a local path (offline-safe: a clear error names the fix)."""
        from flowcore.adapters.loading import load_model

        model = load_model(name_or_path, torch_dtype=torch_dtype, device=device, adapter_class=cls, **components)
        return model

    @classmethod
    def from_pipe(cls, pipe: Any) -> FlowModel:  # pragma: no cover - every family overrides it
        raise NotImplementedError

    def bind(self, **predict_kwargs: Any) -> FlowModel:
        """A view of this adapter whose ``predict`` always receives ``predict_kwargs`` (e.g. ``control``)."""
        view = copy.copy(self)
        view._bound = {**self._bound, **predict_kwargs}
        return view

    # checks -------------------------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        m = self.pad_multiple
        if height % m or width % m:
            raise ValueError(
                f"image size {width}x{height} is not a multiple of {m} for {type(self).__name__}: resize it, or pad "
                f"it with flowcore.images.pad_to_multiple(img, {m}) (pipelines take pad=True) and crop the result"
            )

    def _check_latents(self, latents: Tensor) -> None:
        if not torch.is_floating_point(latents):
            raise TypeError(f"latents must be floating point, got {latents.dtype}")
        if latents.device.type != self.device.type:
            raise ValueError(f"latents are on {latents.device} but the model is on {self.device}: move one of them")
        if torch.isnan(latents).any():
            raise FloatingPointError("latents contain NaNs")

    # schedule ------------------------------------------------------------------------------------------------------
    def image_seq_len(self, height: int, width: int) -> int:
        return (height // self.pad_multiple) * (width // self.pad_multiple)

    def schedule(self, num_steps: int, *, height: int, width: int, **kw: Any) -> Schedule:
        """The model's default grid at ``num_steps`` (dynamic ``mu`` from the image size where the scheduler
        uses it); ``mu=`` overrides; ``sigmas=`` takes an explicit rf list or ``"pipeline"`` for the
        ``linspace(1, 1/N, N)`` grid that FLUX, Kontext and Qwen pipelines pass."""
        config = self.scheduler.config
        if isinstance(kw.get("sigmas"), str):
            if kw["sigmas"] != "pipeline":
                raise ValueError(f"sigmas must be a list or 'pipeline', got {kw['sigmas']!r}")
            import numpy as np

            kw["sigmas"] = list(np.linspace(1.0, 1 / num_steps, num_steps))
        if getattr(config, "use_dynamic_shifting", False) and kw.get("mu") is None:
            from flowcore.schedules import calculate_shift

            kw["mu"] = calculate_shift(
                self.image_seq_len(height, width),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        return make_schedule(self.scheduler, num_steps, mu=kw.get("mu"), sigmas=kw.get("sigmas"))

    # latents -----------------------------------------------------------------------------------------------------
    def to_grid(self, latents: Tensor, height: int, width: int) -> Tensor:
        """(B, C, h, w) latents from this family's latent layout (identity for SD3 and UNet)."""
        return latents

    def from_grid(self, latents: Tensor) -> Tensor:
        """This family's latent layout from (B, C, h, w) (identity for SD3 and UNet)."""
        return latents

    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        self.check_size(height, width)
        f = self.vae_scale_factor
        return (batch, self.latent_channels(), height // f, width // f)

    def prepare_noise(self, batch: int, height: int, width: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """Initial noise in this family's layout, drawn like the stock pipeline (``randn_tensor`` on the grid)."""
        from diffusers.utils.torch_utils import randn_tensor

        z = randn_tensor(self.latent_shape(batch, height, width), generator=generator, device=self.device,
                         dtype=dtype)
        return self.from_grid(z)

    # images ------------------------------------------------------------------------------------------------------
    def _vae_factors(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(getattr(cfg, "scaling_factor", 1.0) or 1.0), float(getattr(cfg, "shift_factor", 0.0) or 0.0)

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """VAE latents of (B, 3, H, W) images in [0, 1]: posterior mean, shifted and scaled, in this layout."""
        from flowcore.images import check_image

        check_image(images, multiple=self.pad_multiple, name="image")
        x = (2.0 * images - 1.0).to(self.device, self.vae.dtype)
        scale, shift = self._vae_factors()
        z = self.vae.encode(x).latent_dist.mode()
        return self.from_grid((z.float() - shift) * scale)

    @torch.no_grad()
    def decode_image(self, latents: Tensor, *, height: int | None = None, width: int | None = None) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] from latents in this layout."""
        z = self.to_grid(latents, *self._pixel_size(latents, height, width))
        scale, shift = self._vae_factors()
        x = self.vae.decode((z / scale + shift).to(self.vae.dtype)).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def _pixel_size(self, latents: Tensor, height: int | None, width: int | None) -> tuple[int, int]:
        if height is not None and width is not None:
            return height, width
        f = self.vae_scale_factor
        return latents.shape[-2] * f, latents.shape[-1] * f

    def encode_ip_image(self, images: Tensor) -> Tensor:
        """IP-Adapter ``image_embeds`` (B, 1, D) of (B, 3, H, W) images in [0, 1]."""
        if self.image_encoder is None:
            raise ValueError(f"{type(self).__name__} has no image encoder: load an IP-Adapter with its encoder")
        return self.image_encoder(images)

    # prompts -----------------------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str] | str, **kw: Any) -> Conditioning:
        """Conditioning rows for ``prompts``; ``""`` rows are the CFG negatives."""
        if isinstance(prompts, str):
            prompts = [prompts]
        cond = self.prompt_encoder(list(prompts), **kw)
        return dataclasses.replace(cond, prompts=tuple(prompts))

    def token_positions(self, prompt: str, words: Sequence[str]) -> list[int]:
        """Positions in the text sequence of the tokens of ``words`` (in prompt order, each word's tokens)."""
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} has no tokenizer to locate words")
        return _find_word_tokens(self.tokenizer, prompt, words, offset=self._text_offset())

    def _text_offset(self) -> int:
        return 0

    # network -------------------------------------------------------------------------------------------------------
    def layout(self, height: int, width: int, *, reference_hw: tuple[int, int] | None = None,
               n_text: int | None = None) -> TokenLayout:  # pragma: no cover - overridden
        raise NotImplementedError

    def predict(self, latents: Tensor, t: Tensor | float, cond: Conditioning, *, guidance: Any = None,
                control: ControlInput | None = None, image_embeds: Tensor | None = None, reference: Any = None,
                ctx: CallContext | None = None, **kw: Any) -> Tensor:
        """Raw network output, one row per latent row, no CFG inside. Bound kwargs (see :meth:`bind`) apply."""
        merged = {**self._bound, "guidance": guidance, "control": control, "image_embeds": image_embeds,
                  "reference": reference, "ctx": ctx, **kw}
        for key, val in self._bound.items():
            if merged.get(key) is None:
                merged[key] = val
        self._check_latents(latents)
        if len(cond) != latents.shape[0]:
            raise ValueError(f"{len(cond)} conditioning rows for {latents.shape[0]} latent rows")
        return self._predict(latents, t, cond, **merged)

    def _predict(self, latents: Tensor, t: Tensor | float, cond: Conditioning, **kw: Any) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def _timesteps(self, t: Tensor | float, n: int, dtype: torch.dtype) -> Tensor:
        """``t`` as a (B,) tensor, like ``t.expand(B)`` in the stock pipelines."""
        t = torch.as_tensor(t, device=self.device)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape[0] != n:
            raise ValueError(f"got {t.shape[0]} timesteps for {n} rows")
        return t.to(dtype)

    def _attention_kwargs(self, ctx: CallContext | None, layout: TokenLayout | None,
                          latent_grid: tuple[int, int] | None, extra: dict | None) -> dict | None:
        kwargs = dict(extra or {})
        if installed(self.denoiser):
            ctx = ctx if ctx is not None else CallContext()
            ctx.layout = layout
            ctx.latent_grid = latent_grid
            kwargs["flowcore_ctx"] = ctx
        return kwargs or None

    def combine_cfg(self, uncond: Tensor, cond: Tensor, scale: float | Tensor) -> Tensor:
        """How this model's pipeline combines CFG rows (plain ``u + g·(c − u)``; Qwen rescales the norm)."""
        from flowcore.guidance import cfg

        return cfg(uncond, cond, scale)


def _token_ids(encoding: Any) -> list[int]:
    """The first row of a tokenizer's ``input_ids`` as a list (tensors, nested lists and flat lists)."""
    ids = encoding["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def _find_word_tokens(tokenizer: Any, prompt: str, words: Sequence[str], offset: int = 0) -> list[int]:
    """Token positions of ``words`` inside the tokenisation of ``prompt`` (first match of each word's tokens)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or (0, 1, 2, 3))
    ids = _token_ids(tokenizer(prompt))
    positions: list[int] = []
    for word in words:
        enc = tokenizer(word, add_special_tokens=False) if _hf(tokenizer) else tokenizer(word)
        sub = [i for i in _token_ids(enc) if i not in special]
        found = [i for i in range(len(ids) - len(sub) + 1) if sub and ids[i:i + len(sub)] == sub]
        if not found:
            raise ValueError(f"word {word!r} not found in the tokenised prompt {prompt!r}")
        positions.extend(offset + found[0] + j for j in range(len(sub)))
    return positions


def _hf(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "convert_tokens_to_ids")
