"""FLUX.1 Kontext (and toy-kontext): ``hidden_states = [target; reference]``, ids ``(flag, row, col)``.

``FluxPosEmbed`` turns any float ids into RoPE, so a coarse cell simply gets ``(0, 2I + ½, 2J + ½)``. Ids are built
in float32 (the stock ids follow the latent dtype; bf16 cannot hold ``x.5`` above 128).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowcore.layout import TokenLayout
from specedit.families.base import CallGeometry, Family
from specedit.layout import CallPlan, Grid

__all__ = ["FluxKontextFamily", "flux_ids"]


def flux_ids(flag: float, positions: Tensor) -> Tensor:
    """``(n, 2)`` rows/cols → ``(n, 3)`` float32 ids with the given flag."""
    ids = torch.empty(positions.shape[0], 3, dtype=torch.float32)
    ids[:, 0] = float(flag)
    ids[:, 1:] = positions.float()
    return ids


def _grid_ids(flag: float, grid: Grid) -> Tensor:
    rows = torch.arange(grid.h, dtype=torch.float32).repeat_interleave(grid.w)
    cols = torch.arange(grid.w, dtype=torch.float32).repeat(grid.h)
    return flux_ids(flag, torch.stack([rows, cols], 1))


class FluxKontextFamily(Family):
    name = "flux_kontext"
    text_key = "encoder_hidden_states"
    attention_kwargs_key = "joint_attention_kwargs"

    def parse(self, module: nn.Module, kw: dict[str, Any]) -> CallGeometry:
        hidden = kw["hidden_states"]
        img_ids, txt_ids = kw.get("img_ids"), kw.get("txt_ids")
        if img_ids is None or txt_ids is None:
            raise ValueError("FLUX calls need img_ids and txt_ids; specedit reads the token grids from them")
        tgrid, rgrid = self._grids(txt_ids, img_ids)
        n_img = tgrid.n_tokens + (rgrid.n_tokens if rgrid else 0)
        if hidden.shape[1] != n_img:
            raise ValueError(f"hidden_states has {hidden.shape[1]} rows but img_ids describe {n_img}")
        return CallGeometry(tgrid, rgrid, int(kw["encoder_hidden_states"].shape[1]), self.sigma_of(kw),
                            int(hidden.shape[0]))

    @staticmethod
    def _grids(txt_ids: Tensor, img_ids: Tensor) -> tuple[Grid, Grid | None]:
        """Target/reference grids from the ids: rows with the first row's flag are the target (vectorised; falls
        back to ``TokenLayout.from_flux_ids`` for its error messages on malformed ids)."""
        ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        flags = ids[:, 0]
        is_target = flags == flags[0]
        n_t = int(is_target.sum())
        stats = torch.stack([ids[:n_t, 1].max() - ids[:n_t, 1].min(), ids[:n_t, 2].max() - ids[:n_t, 2].min()])
        if n_t < ids.shape[0]:
            rest = ids[n_t:]
            stats = torch.cat([stats, torch.stack([rest[:, 1].max() - rest[:, 1].min(),
                                                   rest[:, 2].max() - rest[:, 2].min(),
                                                   (rest[:, 0] != rest[0, 0]).sum().to(ids.dtype)])])
        values = [int(v) for v in stats.round().tolist()]
        tgrid = Grid(values[0] + 1, values[1] + 1)
        rgrid = Grid(values[2] + 1, values[3] + 1) if n_t < ids.shape[0] else None
        order = (ids[:n_t, 1] - ids[0, 1]) * tgrid.w + (ids[:n_t, 2] - ids[0, 2])
        contiguous = bool(is_target[:n_t].all()) and bool(
            (order == torch.arange(n_t, device=ids.device, dtype=order.dtype)).all())
        ok = contiguous and tgrid.n_tokens == n_t and (
            rgrid is None or (rgrid.n_tokens == ids.shape[0] - n_t and values[4] == 0))
        if not ok:
            layout = TokenLayout.from_flux_ids(txt_ids, img_ids)  # raises a clear error for broken grids
            if len(layout.find("reference")) > 1:
                raise NotImplementedError("several reference images are not supported in v1 (spec §10)")
            raise ValueError("img_ids do not describe a row-major target grid followed by one reference grid")
        return tgrid, rgrid

    def reference_flag(self, kw: dict[str, Any], geometry: CallGeometry) -> float:
        ids = kw["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        if geometry.reference is None:
            return 1.0
        return float(ids[geometry.n_target, 0])

    def main_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, plan: CallPlan,
                    geometry: CallGeometry) -> dict[str, Any]:
        parts = [flux_ids(0.0, plan.target.positions)]
        if plan.reference is not None:
            parts.append(flux_ids(self.reference_flag(kw, geometry), plan.reference.positions))
        new = dict(kw)
        new["hidden_states"] = hidden
        new["img_ids"] = torch.cat(parts).to(hidden.device)
        return new

    def draft_kwargs(self, module: nn.Module, kw: dict[str, Any], hidden: Tensor, target: Grid,
                     reference: Grid, timestep: Tensor, branch: dict[str, Any] | None) -> dict[str, Any]:
        new = dict(kw)
        new.update(branch or {})
        new["hidden_states"] = hidden
        new["timestep"] = timestep
        new["img_ids"] = torch.cat([_grid_ids(0.0, target), _grid_ids(1.0, reference)]).to(hidden.device)
        return new

    def to_vae_space(self, latents: Tensor, vae: nn.Module | None) -> Tensor:
        if vae is None:
            return latents
        scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
        return latents / scaling + shift
