"""Guidance composition (the paper's Eq. 3), null-parameter inversion (Eq. 6), plain and directedit inversion.

Everything here is a pure function over a :class:`flowcore.adapters.FlowModel` whose ControlNet carries attribute
networks (no tokenizer, no VAE). At step ``i`` of ``S`` the composite prediction is

    ε̂ = ε_B(x,∅) + w1·[ε_B(x,e) − ε_B(x,∅)] + Σ_j w2_j(i)·[ε_Aj(x,∅,T_j(λ_j)) − ε_Aj(x,∅,T_j(λ_ref,j))]

with ``w2_j(i) = w2_j`` once ``i ≥ ⌈act_t_j·S⌉`` (``flowcore.guidance.gate``). All rows of a step go through one
ControlNet call and one denoiser call: ``[∅, e, (∅,T(λ)), (∅,T(λ_ref)), ...]``; a closed gate, ``w2 = 0`` or
``λ = λ_ref`` drops the attribute rows, which leaves exactly the plain ControlNet CFG sampler. "ε" is the model's
native output (ε, v or flow velocity); the step is ``flowcore.sampling.step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowcore.adapters import Conditioning, ControlInput
from flowcore.attention import CallContext
from flowcore.guidance import cfg, compose, gate
from flowcore.sampling import invert as flow_invert
from flowcore.sampling import loop_context
from flowcore.sampling import sample as flow_sample
from flowcore.sampling import step as flow_step
from flowcore.schedules import Schedule
from style_attr.network import AttributeControlNet, TokenGroup, attribute_networks, host_of

__all__ = [
    "AttributeTerm",
    "InversionResult",
    "RowBlock",
    "call_blocks",
    "composite_predictor",
    "directedit_inversion",
    "edit_inverted",
    "null_parameter_inversion",
    "plain_inversion",
    "sample",
]

INVERSION_FORMAT = "style-attr/inversion"


@dataclass
class AttributeTerm:
    """One slider: network ``net`` at ``lam`` against ``lam_ref`` (default 0), weight ``scale`` (w2), gate
    ``act_t`` (normalised sampling progress at which the term switches on). ``lam``: ``(P,)``, ``(B, P)`` or a
    scalar (every parameter)."""

    net: str
    lam: Tensor | float | Sequence[float]
    lam_ref: Tensor | float | Sequence[float] | None = None
    scale: float = 1.0
    act_t: float = 0.1

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.scale)):
            raise ValueError(f"attribute scale (w2) must be finite, got {self.scale}")
        if not 0.0 <= float(self.act_t) <= 1.0:
            raise ValueError(f"act_t must lie in [0, 1], got {self.act_t}")


@dataclass
class _Term:
    net: AttributeControlNet
    lam: Tensor
    lam_ref: Tensor
    scale: float
    act_t: float
    tokens: Tensor
    ref_tokens: Tensor

    def active(self, i: int, num_steps: int) -> bool:
        return (self.scale != 0.0 and gate(i, num_steps, self.act_t)
                and not torch.equal(self.lam, self.lam_ref))


@dataclass
class RowBlock:
    """B rows of one network call: the denoiser text ``cond``, optional λ-tokens of ``net`` (``(B|1, K, d)``) and
    the ControlNet's own text ``cn_cond`` (``None``: the same as ``cond``)."""

    cond: Conditioning
    net: AttributeControlNet | None = None
    tokens: Tensor | None = None
    cn_cond: Conditioning | None = None


# --- plumbing ------------------------------------------------------------------------------------------------------
def _controlnet_of(model: Any, control: ControlInput) -> nn.Module:
    net = control.controlnet or model.controlnet
    if net is None:
        raise ValueError("style-attr needs a ControlNet on the model (model.controlnet) or in the ControlInput")
    return net


def base_control(model: Any, control_image: Tensor | None = None, scale: float = 1.0) -> ControlInput:
    """The edge-map ControlInput: ``control_image`` if given, else the one bound with ``model.bind(control=...)``."""
    if control_image is not None:
        return ControlInput(image=control_image, scale=scale)
    bound = getattr(model, "_bound", {}).get("control")
    if isinstance(bound, ControlInput) and bound.image is not None:
        return bound
    raise ValueError("style-attr needs the edge map fed to the ControlNets: pass control_image=(B|1,3,H,W) in [0,1] "
                     "or bind it (model.bind(control=ControlInput(image=edges)))")


def _repeat_control(control: ControlInput, n: int, copies: int, cn_cond: Conditioning | None) -> ControlInput:
    """``control`` for ``copies`` stacked blocks of ``n`` rows (per-row fields repeated, as guided() doubles)."""
    changes: dict[str, Any] = {"cond": cn_cond}
    if copies > 1:
        for name in ("image", "scale", "residual_gate"):
            value = getattr(control, name)
            if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n:
                changes[name] = torch.cat([value] * copies, dim=0)
        if isinstance(control.rows, Tensor):
            raise ValueError("style-attr does not support ControlInput.rows (every row gets the ControlNet)")
    return dataclasses.replace(control, **changes)


def call_blocks(model: Any, x: Tensor | Sequence[Tensor], t: Tensor | float, blocks: Sequence[RowBlock],
                control: ControlInput, *, ctx: CallContext | None = None) -> list[Tensor]:
    """One denoiser call (and one ControlNet call) over stacked row blocks; returns one output per block.

    ``x``: the latents of every block (one tensor shared by all, or one per block). Blocks with a network get its
    λ-tokens through the ControlNet's token slot; other rows are stock.
    """
    xs = list(x) if isinstance(x, (list, tuple)) else [x] * len(blocks)
    if len(xs) != len(blocks):
        raise ValueError(f"{len(xs)} latent blocks for {len(blocks)} row blocks")
    n = xs[0].shape[0]
    latents = xs[0] if len(blocks) == 1 else torch.cat(xs, dim=0)
    cond = blocks[0].cond if len(blocks) == 1 else Conditioning.cat([b.cond for b in blocks])
    cn_cond = None
    if any(b.cn_cond is not None for b in blocks):
        parts = [b.cn_cond if b.cn_cond is not None else b.cond for b in blocks]
        cn_cond = parts[0] if len(parts) == 1 else Conditioning.cat(parts)
    ctrl = _repeat_control(control, n, len(blocks), cn_cond)
    groups: list[TokenGroup] = []
    host = None
    for k, block in enumerate(blocks):
        if block.net is None:
            continue
        if block.tokens is None:
            raise ValueError("a row block with a network needs its tokens")
        controlnet = _controlnet_of(model, ctrl)
        if block.net.controlnet is not controlnet:
            raise ValueError(f"attribute network {block.net.name!r} is attached to another ControlNet than the one "
                             "this call uses")
        host = host_of(controlnet)
        rows = torch.arange(k * n, (k + 1) * n, device=latents.device)
        groups.append(TokenGroup(block.net.name, rows, block.tokens))
    fill = host.slot.fill(groups) if groups and host is not None else contextlib.nullcontext()
    with fill:
        out = model.predict(latents, t, cond, control=ctrl, ctx=ctx)
    return list(out.split(n, dim=0)) if len(blocks) > 1 else [out]


def _empty_like_cond(model: Any, cond: Conditioning, uncond: Conditioning | None) -> Conditioning:
    if uncond is not None:
        if len(uncond) != len(cond):
            raise ValueError(f"{len(uncond)} uncond rows for {len(cond)} prompt rows: pass one encoding of '' per row")
        return uncond
    return model.encode_prompt([""] * len(cond))


def resolve_terms(model: Any, terms: Sequence[AttributeTerm], control: ControlInput, batch: int) -> list[_Term]:
    """Look up each term's network on the model's ControlNet and encode its λ and λ_ref tokens (no gradient)."""
    nets = attribute_networks(_controlnet_of(model, control)) if terms else {}
    out = []
    seen = set()
    for term in terms:
        if term.net not in nets:
            raise KeyError(f"no attribute network named {term.net!r} on this model's ControlNet (loaded: "
                           f"{sorted(nets) or 'none'}); load it first")
        if term.net in seen:
            raise ValueError(f"network {term.net!r} appears twice: give one term per network (a multi-parameter λ "
                             "covers several parameters)")
        seen.add(term.net)
        net = nets[term.net]
        lam = net.lam_matrix(term.lam, batch)
        lam_ref = net.lam_matrix(0.0 if term.lam_ref is None else term.lam_ref, batch)
        net.check_lambda(lam)
        net.check_lambda(lam_ref)
        with torch.no_grad():
            out.append(_Term(net, lam, lam_ref, float(term.scale), float(term.act_t), net.embedder(lam),
                             net.embedder(lam_ref)))
    return out


# --- sampling --------------------------------------------------------------------------------------------------------
def composite_predictor(
    model: Any,
    cond: Conditioning,
    *,
    w1: float,
    terms: Sequence[AttributeTerm] = (),
    uncond: Conditioning | None = None,
    control: ControlInput | None = None,
    base_controlnet_text: str = "cfg",
    phase: str = "sample",
    row_log: list[int] | None = None,
) -> Callable[[Tensor, int], Tensor]:
    """The predictor ``(x, i) -> ε̂`` of §2.5 for ``flowcore.sampling.sample`` (one call per step).

    ``base_controlnet_text``: ``"cfg"`` gives every base ControlNet row its own row's text (the diffusers
    pipelines); ``"prompt"`` gives both base rows the prompt (Eq. 3 as written). ``row_log`` collects the
    number of rows of every call.
    """
    if base_controlnet_text not in ("cfg", "prompt"):
        raise ValueError(f"base_controlnet_text must be 'cfg' or 'prompt', got {base_controlnet_text!r}")
    control = control if control is not None else base_control(model)
    batch = len(cond)
    use_cfg = float(w1) != 1.0
    empty = _empty_like_cond(model, cond, uncond) if (use_cfg or terms) else None
    resolved = resolve_terms(model, terms, control, batch)
    prompt_cn = cond if base_controlnet_text == "prompt" else None

    def predict(x: Tensor, i: int) -> Tensor:
        from flowcore.sampling import current_loop

        loop = current_loop()
        if loop is None:
            raise RuntimeError("the composite predictor runs inside flowcore.sampling.sample/invert")
        sched = loop.schedule
        active = [rt for rt in resolved if rt.active(i, sched.num_steps)]
        blocks = [RowBlock(empty, cn_cond=prompt_cn), RowBlock(cond, cn_cond=prompt_cn)] if use_cfg else \
            [RowBlock(cond)]
        for rt in active:
            blocks += [RowBlock(empty, rt.net, rt.tokens), RowBlock(empty, rt.net, rt.ref_tokens)]
        ctx = CallContext(step=i, num_steps=sched.num_steps, phase=loop.phase)
        outs = call_blocks(model, x, sched.t(i), blocks, control, ctx=ctx)
        if row_log is not None:
            row_log.append(len(blocks) * x.shape[0])
        base = cfg(outs[0], outs[1], w1) if use_cfg else outs[0]
        k = 2 if use_cfg else 1
        pairs = [(rt.scale, outs[k + 2 * j], outs[k + 2 * j + 1]) for j, rt in enumerate(active)]
        return compose(base, pairs) if pairs else base

    predict.kind = model.prediction  # type: ignore[attr-defined]
    return predict


def sample(
    model: Any,
    x_T: Tensor,
    schedule: Schedule,
    cond: Conditioning,
    *,
    w1: float,
    terms: Sequence[AttributeTerm] = (),
    uncond: Conditioning | None = None,
    control_image: Tensor | None = None,
    controlnet_scale: float = 1.0,
    base_controlnet_text: str = "cfg",
    callback: Callable[[int, Tensor, Tensor], Tensor | None] | None = None,
    progress: bool = False,
    row_log: list[int] | None = None,
) -> Tensor:
    """Sample with the composite guidance of §2.5 from ``x_T`` (point 0) to point N; returns the clean latents.

    Args:
        model: a FlowModel whose ControlNet carries the networks named in ``terms``.
        x_T: initial latents ``(B, ...)``; cond: B prompt rows; uncond: B rows of ``""`` (encoded when omitted).
        w1: CFG scale; terms: the sliders (each with its w2 and act_t).
        control_image: the edge map ``(B|1, 3, H, W)`` in [0, 1] (or bind it on the model).
    """
    control = base_control(model, control_image, controlnet_scale)
    predictor = composite_predictor(model, cond, w1=w1, terms=terms, uncond=uncond, control=control,
                                    base_controlnet_text=base_controlnet_text, row_log=row_log)
    with torch.no_grad():
        return flow_sample(predictor, x_T, schedule, callback=callback, kind=model.prediction, progress=progress)


# --- inversion -------------------------------------------------------------------------------------------------------
@dataclass
class InversionResult:
    """What an inversion of a real image stores to edit it later.

    Attributes:
        method: ``"null_param"``, ``"plain"`` or ``"directedit"``.
        x_T: where editing starts (null_param: x̂_0; plain: the CFG-1 pivot's noise; directedit: y_0).
        x0: the clean latents of the image. schedule: the grid. w1: CFG scale of editing.
        terms: per network ``{"net", "lam_ref", "scale"}`` (the λ_ref it was inverted at).
        phis: null_param: ``{net: (S, B|1, K, d)}`` optimised null tokens per step.
        trajectory: directedit: the inversion latents y_0..y_S.
        reconstruction: null_param: x̂_S, the replay at λ_ref (``None`` for the others until edited).
        cond, uncond, control_image: the conditioning the inversion used (editing reuses them).
        trace: losses, iteration counts, learning rates and thresholds per step; timings; network fingerprints.
    """

    method: str
    x_T: Tensor
    x0: Tensor
    schedule: Schedule
    w1: float
    terms: list[dict[str, Any]]
    cond: Conditioning
    uncond: Conditioning | None
    control_image: Tensor
    controlnet_scale: float = 1.0
    base_controlnet_text: str = "cfg"
    phis: dict[str, Tensor] = field(default_factory=dict)
    trajectory: list[Tensor] | None = None
    reconstruction: Tensor | None = None
    trace: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (``.safetensors``: tensors plus metadata in the header) and a readable ``.json`` beside it."""
        from flowcore.io import save_tensors

        tensors: dict[str, Tensor] = {"x_T": self.x_T, "x0": self.x0, "control_image": self.control_image,
                                      **self.schedule.to_tensors()}
        if self.reconstruction is not None:
            tensors["reconstruction"] = self.reconstruction
        for name, phi in self.phis.items():
            tensors[f"phi.{name}"] = phi
        for k, z in enumerate(self.trajectory or []):
            tensors[f"trajectory.{k}"] = z
        for prefix, c in (("cond", self.cond), ("uncond", self.uncond)):
            if c is None:
                continue
            tensors[f"{prefix}.embeds"] = c.embeds
            if c.pooled is not None:
                tensors[f"{prefix}.pooled"] = c.pooled
        meta = {
            "format": INVERSION_FORMAT, "format_version": 1, "method": self.method, "w1": self.w1,
            "terms": self.terms, "controlnet_scale": self.controlnet_scale,
            "base_controlnet_text": self.base_controlnet_text, "schedule_kind": self.schedule.kind,
            "num_train_timesteps": self.schedule.num_train_timesteps, "trace": self.trace,
            "fingerprints": self.fingerprints, "timings": self.timings,
            "prompts": list(self.cond.prompts) if self.cond.prompts else None,
            "trajectory_length": len(self.trajectory or []),
        }
        return save_tensors(path, tensors, tag="style_attr", meta=meta, sidecar=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> InversionResult:
        from flowcore.io import load_tensors

        t, meta = load_tensors(path, tag="style_attr", format=INVERSION_FORMAT, what="style-attr inversion file")
        schedule = Schedule.from_tensors(t, meta["schedule_kind"], num_train_timesteps=meta["num_train_timesteps"])
        prompts = tuple(meta["prompts"]) if meta.get("prompts") else None
        cond = Conditioning(t["cond.embeds"], t.get("cond.pooled"), prompts=prompts)
        uncond = Conditioning(t["uncond.embeds"], t.get("uncond.pooled")) if "uncond.embeds" in t else None
        trajectory = [t[f"trajectory.{k}"] for k in range(int(meta.get("trajectory_length", 0)))] or None
        return cls(
            method=meta["method"], x_T=t["x_T"], x0=t["x0"], schedule=schedule, w1=float(meta["w1"]),
            terms=list(meta["terms"]), cond=cond, uncond=uncond, control_image=t["control_image"],
            controlnet_scale=float(meta.get("controlnet_scale", 1.0)),
            base_controlnet_text=str(meta.get("base_controlnet_text", "cfg")),
            phis={k[len("phi."):]: v for k, v in t.items() if k.startswith("phi.")}, trajectory=trajectory,
            reconstruction=t.get("reconstruction"), trace=dict(meta.get("trace") or {}),
            fingerprints=dict(meta.get("fingerprints") or {}), timings=dict(meta.get("timings") or {}),
        )

    def to(self, device: torch.device | str) -> InversionResult:
        """Move every tensor to ``device`` (in place; returns self)."""
        self.x_T, self.x0, self.control_image = self.x_T.to(device), self.x0.to(device), self.control_image.to(device)
        self.phis = {k: v.to(device) for k, v in self.phis.items()}
        self.trajectory = None if self.trajectory is None else [z.to(device) for z in self.trajectory]
        self.reconstruction = None if self.reconstruction is None else self.reconstruction.to(device)
        self.cond = self.cond.to(device)
        self.uncond = None if self.uncond is None else self.uncond.to(device)
        return self


@contextlib.contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Switch off ``requires_grad`` on every parameter of ``modules`` and restore the flags afterwards."""
    params = {id(p): p for m in modules if m is not None for p in m.parameters()}
    flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])


def _pivot_predictor(model: Any, cond: Conditioning, control: ControlInput) -> Callable[[Tensor, int], Tensor]:
    return composite_predictor(model, cond, w1=1.0, control=control)


def _check_terms_for_inversion(terms: Sequence[AttributeTerm]) -> list[AttributeTerm]:
    out = []
    for term in terms:
        if term.act_t > 0:
            warnings.warn(f"act_t={term.act_t} for {term.net!r} is forced to 0 for null-parameter inversion (a "
                          "closed gate gives the null no gradient)", stacklevel=3)
        out.append(dataclasses.replace(term, act_t=0.0))
    return out


def _term_records(resolved: Sequence[_Term]) -> list[dict[str, Any]]:
    return [{"net": rt.net.name, "lam_ref": rt.lam_ref.detach().cpu().tolist(), "scale": rt.scale}
            for rt in resolved]


def null_parameter_inversion(
    model: Any,
    x0: Tensor,
    schedule: Schedule,
    cond: Conditioning,
    terms: Sequence[AttributeTerm],
    *,
    w1: float,
    num_inner_steps: int = 10,
    uncond: Conditioning | None = None,
    control_image: Tensor | None = None,
    controlnet_scale: float = 1.0,
    lr: float = 1e-2,
    progress: bool = False,
) -> InversionResult:
    """Null-parameter inversion (§2.6): optimise the λ_ref tokens φ per step so the composite sampler at CFG
    ``w1`` follows the CFG-1 pivot of ``x0``; only φ gets gradients (the text null and all weights are frozen).

    Per step i: ``B_i = ε_u + w1(ε_c − ε_u) + Σ w2·ε_A(x̂_i; T(λ_ref))`` (no gradient, one call), then up to
    ``num_inner_steps`` Adam steps (lr ``lr·(1 − i/100)``, floored at 0) on
    ``L = mean((step(x̂_i, B_i − Σ w2·ε_A(x̂_i; φ)) − p_{i+1})²)`` with early stop at ``L < 1e-5 + 2e-5·i``; the
    lowest-loss φ of the step is kept (so a step's loss never ends above its start) and carries over.
    """
    start = time.perf_counter()
    if not terms:
        raise ValueError("null-parameter inversion needs at least one attribute term (its λ_ref tokens are the null)")
    if num_inner_steps < 0:
        raise ValueError(f"num_inner_steps must be >= 0, got {num_inner_steps}")
    terms = _check_terms_for_inversion(terms)
    control = base_control(model, control_image, controlnet_scale)
    x0 = x0.to(model.device, torch.float32)
    empty = _empty_like_cond(model, cond, uncond)
    resolved = resolve_terms(model, terms, control, len(cond))
    for rt in resolved:
        if rt.net.output_norm() == 0.0:
            warnings.warn(f"attribute network {rt.net.name!r} is untrained (W_o = 0): the null tokens get no gradient "
                          "and null-parameter inversion is a no-op; train the network first", stacklevel=2)
    if model.dtype != torch.float32:
        warnings.warn(f"null-parameter inversion optimises in float32; the model runs in {model.dtype}, where the "
                      "optimisation often fails", stacklevel=2)
    controlnet = _controlnet_of(model, control)
    n_steps = schedule.num_steps
    with torch.no_grad(), _frozen(model.denoiser, controlnet):
        pivot = flow_invert(_pivot_predictor(model, cond, control), x0, schedule, time_at="target",
                            kind=model.prediction, progress=progress)
    phis = {rt.net.name: rt.ref_tokens.detach().clone().float() for rt in resolved}
    stored: dict[str, list[Tensor]] = {name: [] for name in phis}
    x = pivot.latents[0]
    assert x is not None
    trace: dict[str, list] = {"losses": [], "iterations": [], "lr": [], "threshold": [], "accepted_loss": []}
    base_blocks = [RowBlock(empty), RowBlock(cond)]
    with _frozen(model.denoiser, controlnet), loop_context(schedule, "invert", model.prediction):
        for i in range(n_steps):
            ctx = CallContext(step=i, num_steps=n_steps, phase="invert")
            t = schedule.t(i)
            target = pivot.latents[i + 1]
            with torch.no_grad():
                outs = call_blocks(model, x, t, base_blocks + [RowBlock(empty, rt.net, rt.ref_tokens)
                                                               for rt in resolved], control, ctx=ctx)
                b_i = _sum_terms(cfg(outs[0], outs[1], w1), resolved, outs[2:])
            params = {name: phi.clone().requires_grad_(True) for name, phi in phis.items()}
            lr_i = lr * max(1.0 - i / 100.0, 0.0)
            threshold = 1e-5 + i * 2e-5
            optimiser = torch.optim.Adam(list(params.values()), lr=lr_i)
            losses: list[float] = []
            best = math.inf
            best_params = {k: v.detach().clone() for k, v in params.items()}
            for _ in range(num_inner_steps):
                with torch.enable_grad():
                    null_outs = call_blocks(model, x, t, [RowBlock(empty, rt.net, params[rt.net.name])
                                                          for rt in resolved], control, ctx=ctx)
                    pred = flow_step(x, _sub_terms(b_i, resolved, null_outs), schedule, i, i + 1, kind=model.prediction)
                    loss = torch.mean((pred.float() - target.float()) ** 2)
                value = float(loss)
                losses.append(value)
                if value < best:
                    best = value
                    best_params = {k: v.detach().clone() for k, v in params.items()}
                if value < threshold:
                    break
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            phis = best_params
            with torch.no_grad():
                null_outs = call_blocks(model, x, t, [RowBlock(empty, rt.net, phis[rt.net.name]) for rt in resolved],
                                        control, ctx=ctx)
                x = flow_step(x, _sub_terms(b_i, resolved, null_outs), schedule, i, i + 1, kind=model.prediction)
            for name, phi in phis.items():
                stored[name].append(phi)
            trace["losses"].append(losses)
            trace["iterations"].append(len(losses))
            trace["lr"].append(lr_i)
            trace["threshold"].append(threshold)
            trace["accepted_loss"].append(best if losses else None)
            if losses and best > 10 * threshold:
                trace.setdefault("above_10x_threshold", []).append(i)
    if trace.get("above_10x_threshold"):
        warnings.warn(f"null-parameter inversion stayed above 10× the early-stop threshold at "
                      f"{len(trace['above_10x_threshold'])} of {n_steps} steps; the reconstruction may drift "
                      "(more --inner-steps, or a smaller w1)", stacklevel=2)
    x_T = pivot.latents[0]
    assert x_T is not None
    return InversionResult(
        method="null_param", x_T=x_T, x0=x0, schedule=schedule, w1=float(w1), terms=_term_records(resolved),
        cond=cond, uncond=empty, control_image=control.image, controlnet_scale=_scale_of(control),
        phis={k: torch.stack(v) for k, v in stored.items()}, reconstruction=x, trace=trace,
        fingerprints={rt.net.name: rt.net.fingerprint() for rt in resolved},
        timings={"inversion_s": time.perf_counter() - start},
    )


def _sum_terms(base: Tensor, resolved: Sequence[_Term], outs: Sequence[Tensor]) -> Tensor:
    out = base
    for rt, o in zip(resolved, outs):
        out = out + rt.scale * o
    return out


def _sub_terms(base: Tensor, resolved: Sequence[_Term], outs: Sequence[Tensor]) -> Tensor:
    out = base
    for rt, o in zip(resolved, outs):
        out = out - rt.scale * o
    return out


def _scale_of(control: ControlInput) -> float:
    return float(control.scale) if not isinstance(control.scale, Tensor) else float(control.scale.flatten()[0])


def plain_inversion(
    model: Any,
    x0: Tensor,
    schedule: Schedule,
    cond: Conditioning,
    *,
    w1: float,
    uncond: Conditioning | None = None,
    control_image: Tensor | None = None,
    controlnet_scale: float = 1.0,
    terms: Sequence[AttributeTerm] = (),
    progress: bool = False,
) -> InversionResult:
    """Plain inversion: the CFG-1 pivot (``flowcore.sampling.invert`` with the base prediction ε_B(·, e)); editing
    then samples from its noise at CFG ``w1`` (§6's baseline)."""
    start = time.perf_counter()
    control = base_control(model, control_image, controlnet_scale)
    x0 = x0.to(model.device, torch.float32)
    empty = _empty_like_cond(model, cond, uncond)
    resolved = resolve_terms(model, _check_terms_quiet(terms), control, len(cond))
    with torch.no_grad():
        pivot = flow_invert(_pivot_predictor(model, cond, control), x0, schedule, time_at="target",
                            kind=model.prediction, progress=progress)
    x_T = pivot.latents[0]
    assert x_T is not None
    return InversionResult(
        method="plain", x_T=x_T, x0=x0, schedule=schedule, w1=float(w1), terms=_term_records(resolved), cond=cond,
        uncond=empty, control_image=control.image, controlnet_scale=_scale_of(control),
        fingerprints={rt.net.name: rt.net.fingerprint() for rt in resolved},
        timings={"inversion_s": time.perf_counter() - start},
    )


def _check_terms_quiet(terms: Sequence[AttributeTerm]) -> list[AttributeTerm]:
    return [dataclasses.replace(t, act_t=0.0) for t in terms]


def directedit_inversion(
    model: Any,
    x0: Tensor,
    schedule: Schedule,
    cond: Conditioning,
    *,
    w1: float,
    uncond: Conditioning | None = None,
    control_image: Tensor | None = None,
    controlnet_scale: float = 1.0,
    terms: Sequence[AttributeTerm] = (),
) -> InversionResult:
    """Exact inversion through directedit (flow models, §2.7): ``directedit.invert`` on the style-attr base
    velocity ``v_u + w1(v_c − v_u)`` with the ControlNet fed the edge map; no optimisation.

    Editing (:func:`edit_inverted`) feeds the network ``x_i + Δ_i`` and applies the update to ``x_i``, so at
    λ = λ_ref the path retraces the inversion at any CFG.
    """
    try:
        import directedit
    except ImportError as err:
        raise ImportError("method='directedit' needs the directedit package: pip install 'style-attr[directedit]'") \
            from err
    if model.family != "rf":
        raise ValueError("method='directedit' is for flow models (SD3/SD3.5, toy-sd3); use 'null_param' for "
                         f"{type(model).__name__}")
    start = time.perf_counter()
    control = base_control(model, control_image, controlnet_scale)
    x0 = x0.to(model.device, torch.float32)
    empty = _empty_like_cond(model, cond, uncond)
    resolved = resolve_terms(model, _check_terms_quiet(terms), control, len(cond))
    config = directedit.DirectEditConfig(num_steps=schedule.num_steps, source_guidance=float(w1), injection=None)
    with torch.no_grad():
        cache = directedit.invert(model.bind(control=control), x0, cond, config=config,
                                  source_uncond=empty if model.guidance_kind == "cfg" else None)
    if cache.schedule.sigmas is None or schedule.sigmas is None or not torch.equal(
            cache.schedule.sigmas.cpu().float(), schedule.sigmas.cpu().float()):
        raise ValueError("directedit inverted on another sigma grid than the schedule given: build the schedule with "
                         "model.schedule(S, height=H, width=W)")
    trajectory = [z for z in cache.latents]
    if any(z is None for z in trajectory):
        raise RuntimeError("directedit returned an incomplete trajectory")
    return InversionResult(
        method="directedit", x_T=trajectory[0], x0=x0, schedule=schedule, w1=float(w1),  # type: ignore[arg-type]
        terms=_term_records(resolved), cond=cond, uncond=empty, control_image=control.image,
        controlnet_scale=_scale_of(control), trajectory=trajectory,  # type: ignore[arg-type]
        trace={"nfe": cache.nfe.to_dict()}, fingerprints={rt.net.name: rt.net.fingerprint() for rt in resolved},
        timings={"inversion_s": time.perf_counter() - start},
    )


def edit_inverted(model: Any, inversion: InversionResult, terms: Sequence[AttributeTerm] = (), *,
                  row_log: list[int] | None = None, progress: bool = False) -> Tensor:
    """Edit an inverted image: returns the clean latents.

    - ``null_param``: from x̂_0 with act_t = 0, using the stored φ_i in place of T(λ_ref) for the inverted
      networks (two calls per step, as in the inversion, so λ = λ_ref replays it exactly); other networks use
      T(λ_ref).
    - ``plain``: the composite sampler (§2.5) from the pivot's noise at ``w1``.
    - ``directedit``: the composite velocity at ``x_i + Δ_i``, applied to ``x_i``.

    Terms for networks of the inversion that are not given default to λ = λ_ref.
    """
    control = ControlInput(image=inversion.control_image.to(model.device), scale=inversion.controlnet_scale)
    cond, empty = inversion.cond.to(model.device), inversion.uncond
    empty = empty.to(model.device) if empty is not None else None
    given = {t.net: t for t in terms}
    inverted = [rec["net"] for rec in inversion.terms]
    merged: list[AttributeTerm] = []
    for rec in inversion.terms:
        t = given.get(rec["net"])
        lam = t.lam if t is not None else rec["lam_ref"]
        lam_ref = t.lam_ref if (t is not None and t.lam_ref is not None) else rec["lam_ref"]
        if t is not None and t.lam_ref is not None and not torch.equal(
                torch.as_tensor(t.lam_ref, dtype=torch.float32), torch.as_tensor(rec["lam_ref"], dtype=torch.float32)):
            raise ValueError(f"network {rec['net']!r} was inverted at λ_ref={rec['lam_ref']}; edit with that λ_ref "
                             "(or invert again)")
        scale = t.scale if t is not None else rec["scale"]
        merged.append(AttributeTerm(rec["net"], lam, lam_ref, scale, t.act_t if t is not None else 0.0))
    merged += [t for t in terms if t.net not in inverted]
    if inversion.method == "plain":
        return sample(model, inversion.x_T.to(model.device), inversion.schedule, cond, w1=inversion.w1,
                      terms=merged, uncond=empty, control_image=control.image, controlnet_scale=control.scale,
                      base_controlnet_text=inversion.base_controlnet_text, row_log=row_log, progress=progress)
    if inversion.method == "directedit":
        return _edit_directedit(model, inversion, merged, cond, empty, control, row_log)
    if inversion.method == "null_param":
        return _edit_null_param(model, inversion, merged, inverted, cond, empty, control, row_log)
    raise ValueError(f"unknown inversion method {inversion.method!r}")


def _edit_null_param(model: Any, inv: InversionResult, terms: list[AttributeTerm], inverted: list[str],
                     cond: Conditioning, empty: Conditioning | None, control: ControlInput,
                     row_log: list[int] | None) -> Tensor:
    assert empty is not None
    batch = len(cond)
    resolved = resolve_terms(model, [dataclasses.replace(t, act_t=0.0) for t in terms], control, batch)
    nulls = [rt for rt in resolved if rt.net.name in inverted]
    extra = [rt for rt in resolved if rt.net.name not in inverted]
    for rt in nulls:
        if rt.net.name not in inv.phis:
            raise ValueError(f"the inversion holds no null tokens for {rt.net.name!r}")
    sched, n_steps = inv.schedule, inv.schedule.num_steps
    x = inv.x_T.to(model.device)
    with torch.no_grad(), loop_context(sched, "edit", model.prediction):
        for i in range(n_steps):
            ctx = CallContext(step=i, num_steps=n_steps, phase="edit")
            t = sched.t(i)
            blocks = [RowBlock(empty), RowBlock(cond)] + [RowBlock(empty, rt.net, rt.tokens) for rt in nulls]
            for rt in extra:
                if rt.active(i, n_steps):
                    blocks += [RowBlock(empty, rt.net, rt.tokens), RowBlock(empty, rt.net, rt.ref_tokens)]
            outs = call_blocks(model, x, t, blocks, control, ctx=ctx)
            b_i = _sum_terms(cfg(outs[0], outs[1], inv.w1), nulls, outs[2:2 + len(nulls)])
            null_blocks = [RowBlock(empty, rt.net, inv.phis[rt.net.name][i].to(model.device)) for rt in nulls]
            null_outs = call_blocks(model, x, t, null_blocks, control, ctx=ctx)
            eps = _sub_terms(b_i, nulls, null_outs)
            active_extra = [rt for rt in extra if rt.active(i, n_steps)]
            rest = outs[2 + len(nulls):]
            if active_extra:
                eps = compose(eps, [(rt.scale, rest[2 * j], rest[2 * j + 1]) for j, rt in enumerate(active_extra)])
            if row_log is not None:
                row_log.append((len(blocks) + len(null_blocks)) * batch)
            x = flow_step(x, eps, sched, i, i + 1, kind=model.prediction)
    return x


def _edit_directedit(model: Any, inv: InversionResult, terms: list[AttributeTerm], cond: Conditioning,
                     empty: Conditioning | None, control: ControlInput, row_log: list[int] | None) -> Tensor:
    if inv.trajectory is None:
        raise ValueError("this directedit inversion holds no trajectory")
    sched, n_steps = inv.schedule, inv.schedule.num_steps
    traj = [z.to(model.device) for z in inv.trajectory]
    predictor = composite_predictor(model, cond, w1=inv.w1, terms=terms, uncond=empty, control=control,
                                    base_controlnet_text=inv.base_controlnet_text, phase="edit", row_log=row_log)
    x = traj[0]
    with torch.no_grad(), loop_context(sched, "edit", model.prediction):
        for i in range(n_steps):
            shifted = x + (traj[i + 1] - traj[i])
            out = predictor(shifted, i)
            x = flow_step(x, out, sched, i, i + 1, kind=model.prediction)
    return x
