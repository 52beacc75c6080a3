"""Tiny offline models for directedit's tests and benchmarks (no transformers, no downloads).

Adapters around ``flowcore.testing``'s tiny diffusers transformers with a hashing prompt encoder (each prompt
maps to fixed pseudo-random embeddings; ``""`` too) and a word tokenizer, plus a small MLP velocity field
(``MLPFlowModel``) whose rows are computed independently, so exactness can be checked at fp64 round-off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from flowcore.adapters import Conditioning, FlowModel, FluxKontextModel, FluxModel, SD3Model, UNetModel
from flowcore.seeding import seeded_init

__all__ = ["MLPFlowModel", "WordTokenizer", "hash_encoder", "tiny_flux_model", "tiny_sd3_model", "tiny_unet_model"]


def _seed_of(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "little") % (2**62)


class WordTokenizer:
    """Whitespace word tokenizer with stable ids (hash of the word), ``[BOS] words [EOS]``; no padding."""

    bos, eos = 1, 2

    def word_id(self, word: str) -> int:
        return 3 + _seed_of(word.lower(), "tok") % 997

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [self.bos, *(self.word_id(w) for w in text.split()), self.eos]}


def hash_encoder(seq_len: int, width: int, pooled: int | None, *, text_ids: bool = False,
                 dtype: torch.dtype = torch.float32) -> Any:
    """A prompt encoder: word ``j`` of a prompt sets position ``1 + j`` of the sequence to that word's fixed random
    vector (position 0 and the rest hold the empty prompt's vectors), so prompts that share words share rows."""

    def vec(key: str, n: int) -> Tensor:
        gen = torch.Generator().manual_seed(_seed_of(key, f"emb{n}"))
        return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)

    def encode(prompts: list[str], **_: Any) -> Conditioning:
        rows, pools = [], []
        for prompt in prompts:
            seq = torch.stack([vec(f"<empty>{p}", width) for p in range(seq_len)])
            for j, word in enumerate(prompt.lower().split()[: seq_len - 1]):
                seq[1 + j] = vec(word, width)
            rows.append(seq)
            pools.append(vec(f"<pool>{prompt.lower()}", pooled) if pooled else None)
        embeds = torch.stack(rows)
        pooled_t = torch.stack(pools) if pooled else None  # type: ignore[arg-type]
        ids = torch.zeros(seq_len, 3, dtype=dtype) if text_ids else None
        return Conditioning(embeds, pooled_t, text_ids=ids)

    return encode


def _to(model: FlowModel, dtype: torch.dtype, device: str | torch.device) -> FlowModel:
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # casting a tiny random model needs no keep-in-fp32 advice
    try:
        model.denoiser.to(device=device, dtype=dtype)
        model.vae.to(device=device, dtype=dtype)
    finally:
        dlogging.set_verbosity(level)
    base = model.prompt_encoder

    def encode(prompts: list[str], **kw: Any) -> Conditioning:
        return base(prompts, **kw).to(device, dtype)

    model.prompt_encoder = encode
    return model


def tiny_sd3_model(*, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0, shift: float = 3.0,
                   text_len: int = 8, **cfg: Any) -> SD3Model:
    """``SD3Model`` over ``flowcore.testing.tiny_sd3`` (2 layers, ``attn2`` in layer 0, RMS q/k norm) and a tiny
    SD3 VAE (factor 8); 64×64 images give 8×8 latents (16 image tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowcore.testing import tiny_sd3, tiny_vae

    den = tiny_sd3(seed=seed, **cfg)
    width = den.config.joint_attention_dim
    model = SD3Model(den, tiny_vae("sd3", seed=seed), FlowMatchEulerDiscreteScheduler(shift=shift),
                     prompt_encoder=hash_encoder(text_len, width, den.config.pooled_projection_dim),
                     model_id="tiny-sd3", tokenizer=WordTokenizer())
    return _to(model, dtype, device)  # type: ignore[return-value]


def tiny_flux_model(*, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                    kontext: bool = False, guidance_embeds: bool = True, num_layers: int = 1,
                    num_single_layers: int = 2, text_len: int = 8, **cfg: Any) -> FluxModel:
    """``FluxModel`` (or ``FluxKontextModel``) over ``flowcore.testing.tiny_flux`` (1 double + 2 single blocks)
    and a tiny FLUX VAE; 64×64 images give 16 packed tokens of 16 channels."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowcore.testing import tiny_flux, tiny_vae

    den = tiny_flux(kontext=kontext, seed=seed, guidance_embeds=guidance_embeds, num_layers=num_layers,
                    num_single_layers=num_single_layers, **cfg)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                            max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    cls = FluxKontextModel if kontext else FluxModel
    model = cls(den, tiny_vae("flux", seed=seed), sched,
                prompt_encoder=hash_encoder(text_len, den.config.joint_attention_dim,
                                            den.config.pooled_projection_dim, text_ids=True),
                model_id="tiny-flux-kontext" if kontext else "tiny-flux", tokenizer=WordTokenizer())
    return _to(model, dtype, device)  # type: ignore[return-value]


def tiny_unet_model(*, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                    prediction_type: str = "epsilon") -> UNetModel:
    """``UNetModel`` (VP, DDIM) over ``flowcore.testing.tiny_unet`` and a tiny SD VAE."""
    from diffusers import DDIMScheduler

    from flowcore.testing import tiny_unet, tiny_vae

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    den = tiny_unet(seed=seed)
    model = UNetModel(den, tiny_vae("sd", seed=seed), sched,
                      prompt_encoder=hash_encoder(6, den.config.cross_attention_dim, None), model_id="tiny-unet",
                      tokenizer=WordTokenizer())
    return _to(model, dtype, device)  # type: ignore[return-value]


class _MLP(nn.Module):
    def __init__(self, dim: int, cond_dim: int, hidden: int, seed: int):
        super().__init__()
        with seeded_init(seed):
            self.net = nn.Sequential(nn.Linear(dim + cond_dim + 2, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                     nn.Tanh(), nn.Linear(hidden, dim))
        self.config = SimpleNamespace(dim=dim, cond_dim=cond_dim, hidden=hidden)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, g: Tensor) -> Tensor:
        feats = torch.cat([x.flatten(1), cond, t[:, None] / 1000.0, g[:, None]], dim=1)
        return self.net(feats).view_as(x)


class MLPFlowModel(FlowModel):
    """A torch MLP velocity field behind the FlowModel interface: latents ``(B, C, h, w)``, each row computed
    alone (so batch composition never changes a row), CFG (``guidance_kind="cfg"``), embedded guidance
    (``"embedded"``) or none. ``calls`` records ``(latents, t, prompts, guidance)`` of every call."""

    prediction = "flow"

    def __init__(self, *, shape: Sequence[int] = (2, 4, 4), guidance_kind: str = "cfg", family: str = "rf",
                 hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64, record: bool = False):
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        dim = int(torch.tensor(shape).prod())
        net = _MLP(dim, 8, hidden, seed).to(dtype)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0) if family == "rf" else DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
            set_alpha_to_one=False, steps_offset=1)
        vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(1,), latent_channels=shape[0]))
        super().__init__(net, vae, sched, prompt_encoder=hash_encoder(1, 8, 8, dtype=dtype), model_id="mlp",
                         tokenizer=WordTokenizer())
        self.family = family  # type: ignore[assignment]
        self.prediction = "flow" if family == "rf" else "eps"  # type: ignore[assignment]
        self.guidance_kind = guidance_kind  # type: ignore[assignment]
        self.shape = tuple(shape)
        self.record = record
        self.calls: list[dict[str, Any]] = []

    def _predict(self, latents: Tensor, t: Any, cond: Conditioning, *, guidance: Any = None, **_: Any) -> Tensor:
        n = latents.shape[0]
        x = latents.to(self.dtype)
        tt = torch.as_tensor(t, dtype=self.dtype).expand(n)
        g = torch.zeros(n, dtype=self.dtype) if guidance is None else torch.as_tensor(guidance, dtype=self.dtype)
        g = g.expand(n) if g.ndim == 0 else g
        if self.guidance_kind != "embedded":
            g = torch.zeros(n, dtype=self.dtype)
        if self.record:
            self.calls.append({"latents": latents.clone(), "t": float(tt[0]), "prompts": cond.prompts,
                               "guidance": None if guidance is None else torch.as_tensor(guidance).clone()})
        pooled = cond.pooled.to(self.dtype)
        # one row at a time: the output of a row never depends on the other rows of the batch
        return torch.cat([self.denoiser(x[i:i + 1], tt[i:i + 1], pooled[i:i + 1], g[i:i + 1]) for i in range(n)])

    def layout(self, height: int, width: int, **_: Any) -> Any:  # pragma: no cover - no attention sites
        raise NotImplementedError
