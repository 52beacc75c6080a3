"""The inversion cache: the stored trajectory y_s..y_N, its grid, the source conditioning and fingerprints.

``delta(k)`` is recomputed as ``latents[k+1] − latents[k]`` (bitwise what storing it would give), so the memory
is N − s + 1 latents (spec §2.3). ``save``/``load`` write one safetensors file (tensors plus the metadata in its
header) and a readable JSON sidecar, both atomically; ``load(model=...)`` and :meth:`InversionCache.check` refuse
a cache made with another model, grid, step count or source prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from directedit.config import DirectEditConfig
from directedit.rows import NFECount
from flowcore.adapters import Conditioning
from flowcore.io import load_tensors, save_tensors
from flowcore.schedules import Schedule

__all__ = ["CacheMismatchError", "InversionCache", "conditioning_fingerprint", "model_fingerprint"]

FORMAT_VERSION = 1


class CacheMismatchError(ValueError):
    """An inversion cache does not belong to the model, grid, step count or prompt it is used with."""


def _hash_tensor(h: Any, t: Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    data = t.detach().to("cpu", torch.float32).contiguous()
    h.update(str(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())


def model_fingerprint(model: Any) -> dict[str, str]:
    """Identity of a model: adapter and denoiser classes, model id, dtype, a hash of the denoiser config and of
    samples of its weights (the first 1024 values of about ten parameter tensors spread over the network)."""
    den = model.denoiser
    h = hashlib.sha256()
    config = getattr(den, "config", None)
    if config is not None:
        items = dict(config) if hasattr(config, "keys") else dict(vars(config))
        h.update(json.dumps({k: str(v) for k, v in items.items()}, sort_keys=True).encode())
    params = list(den.parameters())
    picks = params[:: max(1, len(params) // 9)] + params[-1:]
    for p in picks:
        try:
            h.update(p.detach().flatten()[:1024].to("cpu", torch.float32).numpy().tobytes())
        except (RuntimeError, NotImplementedError):  # meta tensors: shapes only
            h.update(str(tuple(p.shape)).encode())
    return {"adapter": type(model).__name__, "denoiser": type(den).__name__, "model_id": str(model.model_id or ""),
            "dtype": str(model.dtype).removeprefix("torch."), "weights": h.hexdigest()[:20]}


def conditioning_fingerprint(*conds: Conditioning | None) -> str:
    """A hash of conditioning rows (embeddings, pooled, masks) and their prompts."""
    h = hashlib.sha256()
    for cond in conds:
        if cond is None:
            h.update(b"-")
            continue
        for t in (cond.embeds, cond.pooled, cond.mask):
            _hash_tensor(h, t)
        h.update(json.dumps(list(cond.prompts) if cond.prompts is not None else None).encode())
    return h.hexdigest()[:20]


def _cond_tensors(prefix: str, cond: Conditioning | None) -> dict[str, Tensor]:
    if cond is None:
        return {}
    out = {f"{prefix}.embeds": cond.embeds}
    for name in ("pooled", "mask", "text_ids"):
        value = getattr(cond, name)
        if value is not None:
            out[f"{prefix}.{name}"] = value
    for key, value in cond.extra.items():
        out[f"{prefix}.extra.{key}"] = value
    return out


def _cond_from(prefix: str, tensors: dict[str, Tensor], prompts: list[str] | None) -> Conditioning | None:
    if f"{prefix}.embeds" not in tensors:
        return None
    extra = {k[len(prefix) + 7:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.extra.")}
    return Conditioning(tensors[f"{prefix}.embeds"], tensors.get(f"{prefix}.pooled"), tensors.get(f"{prefix}.mask"),
                        tensors.get(f"{prefix}.text_ids"), extra, tuple(prompts) if prompts is not None else None)


@dataclass
class InversionCache:
    """Everything one inversion produced and the forward pass needs.

    Attributes:
        latents: ``latents[k] = y_k`` (state dtype, fp32 by default) for ``skip <= k <= N``; ``None`` below.
        schedule: the grid (``schedule.sigmas`` has N+1 entries, ``sigmas[N] = 0``).
        skip: s (``skip_steps``). source_guidance: g_src of the inversion (the forward source branch reuses it).
        config: the :class:`DirectEditConfig` of the inversion.
        source_cond, source_uncond: the source rows' conditioning (uncond ``None`` without CFG rows).
        model_fingerprint, cond_fingerprint: identities checked by :meth:`check` / :meth:`load`.
        arch: ``"flux"``, ``"sd3"``, ``"unet"`` or ``"mlp"``. n_images: B.
        image_size: padded pixel size ``(H, W)``; original_size: before padding (``None`` if unknown).
        reference: Kontext reference tokens (``None`` otherwise).
        value_cache: ``{step: {site: V}}`` recorded for ``source_branch="cached"`` (V: ``[rows, S, heads, d]``),
            with ``value_layout`` naming each recorded row ``(kind, image)`` and ``injection`` the resolved
            configuration (sites, K, rows) it was recorded for.
        attention_map: the :class:`~directedit.AttentionMask` map ``(B,1,h,w)`` when probed.
        nfe: the inversion's calls and rows. timings: seconds.
    """

    latents: list[Tensor | None]
    schedule: Schedule
    skip: int
    source_guidance: float
    config: DirectEditConfig
    source_cond: Conditioning
    source_uncond: Conditioning | None
    model_fingerprint: dict[str, str]
    cond_fingerprint: str
    arch: str
    n_images: int
    image_size: tuple[int, int]
    original_size: tuple[int, int] | None = None
    reference: Tensor | None = None
    value_cache: dict[int, dict[str, Tensor]] | None = None
    value_layout: list[tuple[str, int]] | None = None
    injection: dict[str, Any] | None = None
    attention_map: Tensor | None = None
    attention_info: dict[str, Any] | None = None
    nfe: NFECount = field(default_factory=NFECount)
    timings: dict[str, float] = field(default_factory=dict)

    # --- views ----------------------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def sigmas(self) -> Tensor:
        assert self.schedule.sigmas is not None or self.schedule.kind == "vp"
        return self.schedule.sigmas if self.schedule.sigmas is not None else self.schedule.s

    @property
    def z0(self) -> Tensor:
        """The clean latent y_N (the encoded image)."""
        z = self.latents[self.num_steps]
        assert z is not None
        return z

    @property
    def noise(self) -> Tensor:
        """The inverted latent y_s where both branches start."""
        z = self.latents[self.skip]
        assert z is not None
        return z

    def delta(self, k: int) -> Tensor:
        """Δ_k = y_{k+1} − y_k, the inversion increment of denoising step k (``skip <= k < N``)."""
        if not self.skip <= k < self.num_steps:
            raise IndexError(f"delta({k}) is defined for {self.skip} <= k < {self.num_steps}")
        hi, lo = self.latents[k + 1], self.latents[k]
        assert hi is not None and lo is not None
        return hi - lo

    @property
    def trajectory_nbytes(self) -> int:
        return sum(z.numel() * z.element_size() for z in self.latents if z is not None)

    @property
    def value_nbytes(self) -> int:
        if not self.value_cache:
            return 0
        return sum(v.numel() * v.element_size() for step in self.value_cache.values() for v in step.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the trajectory and the recorded Values."""
        return self.trajectory_nbytes + self.value_nbytes

    def to(self, device: torch.device | str) -> InversionCache:
        """Move the trajectory, conditioning and reference (the value cache stays where it was recorded)."""
        self.latents = [None if z is None else z.to(device) for z in self.latents]
        self.source_cond = self.source_cond.to(device)
        self.source_uncond = None if self.source_uncond is None else self.source_uncond.to(device)
        self.reference = None if self.reference is None else self.reference.to(device)
        return self

    # --- checks ---------------------------------------------------------------------------------------------
    def check(self, model: Any = None, *, num_steps: int | None = None, sigmas: Tensor | None = None,
              source_prompt: str | list[str] | None = None) -> None:
        """Raise :class:`CacheMismatchError` when the cache was made with another model, step count, grid or
        source prompt."""
        if model is not None:
            mine, theirs = self.model_fingerprint, model_fingerprint(model)
            diff = [k for k in mine if mine.get(k) != theirs.get(k)]
            if diff:
                detail = ", ".join(f"{k}: cache {mine.get(k)!r} vs model {theirs.get(k)!r}" for k in diff)
                raise CacheMismatchError(f"this inversion cache was made with another model ({detail}); invert the "
                                         "image again with this model")
        if num_steps is not None and num_steps != self.num_steps:
            raise CacheMismatchError(f"this inversion cache has {self.num_steps} steps but {num_steps} were asked "
                                     "for; invert again with the new step count (or edit with num_steps="
                                     f"{self.num_steps})")
        if sigmas is not None:
            theirs_sig = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
            if theirs_sig.shape != self.sigmas.shape or not torch.equal(theirs_sig, self.sigmas.cpu().float()):
                raise CacheMismatchError("this inversion cache was made on another sigma grid; invert again with the "
                                         "grid you want to edit on")
        if source_prompt is not None:
            asked = [source_prompt] if isinstance(source_prompt, str) else list(source_prompt)
            stored = list(self.source_cond.prompts or ())
            if stored and asked != stored:
                raise CacheMismatchError(f"this inversion cache was made with the source prompt(s) {stored!r}, not "
                                         f"{asked!r}")

    # --- I/O ------------------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "skip": self.skip, "source_guidance": self.source_guidance,
            "config": self.config.to_dict(), "model_fingerprint": self.model_fingerprint,
            "cond_fingerprint": self.cond_fingerprint, "arch": self.arch, "n_images": self.n_images,
            "image_size": list(self.image_size),
            "original_size": None if self.original_size is None else list(self.original_size),
            "schedule_kind": self.schedule.kind, "num_train_timesteps": self.schedule.num_train_timesteps,
            "source_prompts": None if self.source_cond.prompts is None else list(self.source_cond.prompts),
            "uncond_prompts": None if self.source_uncond is None or self.source_uncond.prompts is None
            else list(self.source_uncond.prompts),
            "value_layout": None if self.value_layout is None else [list(x) for x in self.value_layout],
            "injection": self.injection, "attention_info": self.attention_info, "nfe": self.nfe.to_dict(),
            "timings": self.timings,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors; metadata in its header) and ``path`` with ``.json`` (readable copy).

        Both files are written atomically; returns the safetensors path.
        """
        tensors: dict[str, Tensor] = {f"latents.{k}": z for k, z in enumerate(self.latents) if z is not None}
        tensors.update(self.schedule.to_tensors())
        tensors.update(_cond_tensors("source", self.source_cond))
        tensors.update(_cond_tensors("uncond", self.source_uncond))
        if self.reference is not None:
            tensors["reference"] = self.reference
        if self.attention_map is not None:
            tensors["attention_map"] = self.attention_map
        for step, sites in (self.value_cache or {}).items():
            for site, v in sites.items():
                tensors[f"values.{step}.{site}"] = v
        return save_tensors(path, tensors, tag="directedit", meta=self._metadata(), sidecar=True)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None, *, source_prompt: str | list[str] | None = None,
             num_steps: int | None = None, device: torch.device | str | None = None) -> InversionCache:
        """Read a cache written by :meth:`save`; with ``model`` (and optionally ``source_prompt``,
        ``num_steps``) it is checked first and moved to the model's device."""
        tensors, meta = load_tensors(path, tag="directedit", format=FORMAT_VERSION,
                                     what="directedit inversion cache")
        schedule = Schedule.from_tensors(tensors, meta["schedule_kind"],
                                         num_train_timesteps=meta["num_train_timesteps"])
        latents: list[Tensor | None] = [tensors.get(f"latents.{k}") for k in range(schedule.num_steps + 1)]
        values: dict[int, dict[str, Tensor]] | None = None
        for key, v in tensors.items():
            if key.startswith("values."):
                _, step, site = key.split(".", 2)
                values = values or {}
                values.setdefault(int(step), {})[site] = v
        cache = cls(
            latents=latents, schedule=schedule, skip=int(meta["skip"]), source_guidance=float(meta["source_guidance"]),
            config=DirectEditConfig.from_dict(meta["config"]),
            source_cond=_cond_from("source", tensors, meta.get("source_prompts")),  # type: ignore[arg-type]
            source_uncond=_cond_from("uncond", tensors, meta.get("uncond_prompts")),
            model_fingerprint=dict(meta["model_fingerprint"]), cond_fingerprint=str(meta["cond_fingerprint"]),
            arch=str(meta["arch"]), n_images=int(meta["n_images"]), image_size=tuple(meta["image_size"]),
            original_size=None if meta.get("original_size") is None else tuple(meta["original_size"]),
            reference=tensors.get("reference"), value_cache=values,
            value_layout=None if meta.get("value_layout") is None else [tuple(x) for x in meta["value_layout"]],
            injection=meta.get("injection"), attention_map=tensors.get("attention_map"),
            attention_info=meta.get("attention_info"), timings=dict(meta.get("timings") or {}),
        )
        nfe = meta.get("nfe") or {}
        cache.nfe = NFECount(int(nfe.get("calls", 0)), int(nfe.get("rows", 0)),
                             {k: (int(v["calls"]), int(v["rows"])) for k, v in (nfe.get("by_phase") or {}).items()})
        if model is not None or source_prompt is not None or num_steps is not None:
            cache.check(model, source_prompt=source_prompt, num_steps=num_steps)
        if device is not None or model is not None:
            cache.to(device if device is not None else model.device)
        return cache
