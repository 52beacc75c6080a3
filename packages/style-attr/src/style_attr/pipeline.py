"""``StyleAttrPipeline``: text-to-image with attribute sliders, and real-image editing (§5.2).

A thin diffusers ``DiffusionPipeline`` over a flowcore adapter (SD1.5 + ControlNet, SD3/SD3.5 + SD3 ControlNet,
toy-unet, toy-sd3) and the functional API (:func:`style_attr.sample`, the inversions, :func:`edit_inverted`).
Attribute keys are ``"<net>.<param>"``; a bare ``"<param>"`` works when exactly one loaded network has it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from style_attr.composition import (
    AttributeTerm,
    InversionResult,
    directedit_inversion,
    edit_inverted,
    null_parameter_inversion,
    plain_inversion,
    sample,
)
from style_attr.filters import canny_edges
from style_attr.models import default_cfg, default_steps, load_base
from style_attr.network import AttributeControlNet, attribute_networks

__all__ = ["StyleAttrOutput", "StyleAttrPipeline", "parse_attributes"]


@dataclass
class StyleAttrOutput(BaseOutput):  # type: ignore[misc]
    """``images`` (PIL list, ``(B,3,H,W)`` tensor or latents per ``output_type``), the latents, the edge map used
    and a dict of settings (for sidecars)."""

    images: Any
    latents: Tensor | None = None
    edges: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def parse_attributes(values: dict[str, float | Sequence[float]] | None,
                     nets: dict[str, AttributeControlNet]) -> dict[str, Tensor]:
    """``{"net.param" | "param": value}`` → ``{net: λ (P,)}`` (parameters not given are 0)."""
    out: dict[str, Tensor] = {}
    for key, value in (values or {}).items():
        if "." in key:
            net_name, param = key.split(".", 1)
            if net_name not in nets:
                raise KeyError(f"no attribute network {net_name!r} is loaded (loaded: {sorted(nets) or 'none'})")
        else:
            owners = [n for n, net in nets.items() if key in net.spec.params]
            if not owners:
                known = sorted(f"{n}.{p}" for n, net in nets.items() for p in net.spec.params)
                raise KeyError(f"attribute {key!r} is not one a loaded network was trained on (available: "
                               f"{known or 'none: load an attribute network first'})")
            if len(owners) > 1:
                raise KeyError(f"attribute {key!r} exists in several networks {owners}: write '<net>.{key}'")
            net_name, param = owners[0], key
        net = nets[net_name]
        if param not in net.spec.params:
            raise KeyError(f"network {net_name!r} was trained on {list(net.spec.params)}, not {param!r}")
        lam = out.setdefault(net_name, torch.zeros(net.spec.num_params))
        lam[net.spec.params.index(param)] = float(torch.as_tensor(value))
    return out


class StyleAttrPipeline(DiffusionPipeline):
    """Attribute sliders over a base model with an edge ControlNet. Build it with :meth:`from_toy`,
    :meth:`from_pretrained` or :meth:`from_pipe`."""

    model_cpu_offload_seq = "controlnet->denoiser->vae"

    def __init__(self, denoiser: nn.Module, controlnet: nn.Module, vae: nn.Module, scheduler: Any):
        super().__init__()
        self.register_modules(denoiser=denoiser, controlnet=controlnet, vae=vae, scheduler=scheduler)
        self.model: Any = None

    # construction ------------------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, attributes: Sequence[str | os.PathLike | AttributeControlNet] = ()) -> StyleAttrPipeline:
        """Wrap a flowcore FlowModel whose ``controlnet`` is the edge ControlNet."""
        if model.controlnet is None:
            raise ValueError("StyleAttrPipeline needs a base model with an edge ControlNet (model.controlnet)")
        pipe = cls(model.denoiser, model.controlnet, model.vae, model.scheduler)
        pipe.model = model
        for attr in attributes:
            pipe.load_attribute(attr)
        return pipe

    @classmethod
    def from_pretrained(cls, base: str, controlnet: str | nn.Module | None = None,  # type: ignore[override]
                        attributes: Sequence[str | os.PathLike | AttributeControlNet] = (), *,
                        torch_dtype: torch.dtype | None = None, local_files_only: bool = False,
                        device: str | torch.device = "cpu") -> StyleAttrPipeline:
        """A toy name, hub id or local pipeline folder plus its ControlNet (id, folder or module).

        ``local_files_only``: refuse hub ids that are not in the local cache (set ``HF_HUB_OFFLINE=1`` to make every
        loader offline)."""
        if local_files_only and not (base.startswith("toy-") or os.path.isdir(base)):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(base, "model_index.json"), str):
                raise FileNotFoundError(f"{base!r} is not in the local Hugging Face cache (local_files_only=True)")
        model = load_base(base, controlnet=controlnet, dtype=torch_dtype or torch.float32, device=device)
        return cls.from_model(model, attributes)

    @classmethod
    def from_pipe(cls, pipe: Any, attributes: Sequence[str | os.PathLike | AttributeControlNet] = (),  # type: ignore[override]
                  **_: Any) -> StyleAttrPipeline:
        """From a loaded ``StableDiffusionControlNetPipeline`` or ``StableDiffusion3ControlNetPipeline``."""
        from flowcore.adapters import adapter_from_pipe

        if getattr(pipe, "controlnet", None) is None:
            raise ValueError(f"{type(pipe).__name__} has no ControlNet; use a (SD3) ControlNet pipeline")
        return cls.from_model(adapter_from_pipe(pipe), attributes)

    @classmethod
    def from_toy(cls, name: str, attributes: Sequence[str | os.PathLike | AttributeControlNet] = (), *,
                 random_init: bool = False, controlnet: str | nn.Module | None = None) -> StyleAttrPipeline:
        """``toy-unet`` (toyworld's edge ControlNet) or ``toy-sd3`` (the committed style-attr ControlNet)."""
        return cls.from_model(load_base(name, controlnet=controlnet, random_init=random_init), attributes)

    # attribute networks ----------------------------------------------------------------------------------------------
    @property
    def attributes(self) -> dict[str, AttributeControlNet]:
        return attribute_networks(self.model.controlnet)

    def load_attribute(self, path_or_net: str | os.PathLike | AttributeControlNet, name: str | None = None,
                       *, strict_base: bool = True) -> AttributeControlNet:
        """Attach a saved network (checked against this ControlNet) or move an attached one onto it."""
        if isinstance(path_or_net, AttributeControlNet):
            if path_or_net.controlnet is self.model.controlnet:
                return path_or_net
            host_nets = self.attributes
            if host_nets:
                next(iter(host_nets.values())).add_adapter(path_or_net)
                return path_or_net
            raise ValueError("this network is attached to another ControlNet; load it from its folder instead")
        return AttributeControlNet.from_pretrained(path_or_net, self.model.controlnet, name=name,
                                                   strict_base=strict_base)

    def unload_attribute(self, name: str) -> None:
        nets = self.attributes
        if name not in nets:
            raise KeyError(f"no attribute network {name!r} is loaded (loaded: {sorted(nets) or 'none'})")
        nets[name].detach()

    # helpers ------------------------------------------------------------------------------------------------------
    def _edges_from(self, image: Tensor) -> Tensor:
        if getattr(self.model, "is_toy", False):
            from flowcore.toy import edge_map

            return edge_map(image)
        return canny_edges(image).expand(-1, 3, -1, -1).contiguous()

    def _image_tensor(self, image: Any) -> Tensor:
        from flowcore.images import check_image

        return check_image(image, name="image").float()

    def _terms(self, attributes: dict | None, lambda_ref: dict | None, scale: float, act_t: float) -> list[AttributeTerm]:
        nets = self.attributes
        lam = parse_attributes(attributes, nets)
        ref = parse_attributes(lambda_ref, nets)
        unknown_ref = set(ref) - set(lam)
        if unknown_ref:
            raise ValueError(f"lambda_ref names networks without a λ: {sorted(unknown_ref)}")
        return [AttributeTerm(n, v, ref.get(n), scale=scale, act_t=act_t) for n, v in lam.items()]

    def _decode(self, latents: Tensor, output_type: str, height: int, width: int) -> Any:
        if output_type == "latent":
            return latents
        images = self.model.decode_image(latents, height=height, width=width)
        if output_type == "pt":
            return images
        if output_type == "pil":
            from flowcore.images import to_pil

            return to_pil(images)
        raise ValueError(f"output_type must be 'pil', 'pt' or 'latent', got {output_type!r}")

    # generation ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], image: Any = None, *, edge_image: Any = None,
                 attributes: dict[str, float] | None = None, lambda_ref: dict[str, float] | None = None,
                 attribute_scale: float = 1.0, act_t: float = 0.1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 controlnet_conditioning_scale: float = 1.0, generator: torch.Generator | None = None,
                 latents: Tensor | None = None, height: int | None = None, width: int | None = None,
                 output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable[[int, Tensor], None] | None = None) -> Any:
        """Generate with sliders. The edge map is ``edge_image``, or the edges of ``image`` (Canny; toys:
        ``flowcore.toy.edge_map``), or ``edge_image="self"``: the edges of a first λ_ref pass with the same seed."""
        model = self.model
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        steps = num_inference_steps or default_steps(model)
        w1 = default_cfg(model) if guidance_scale is None else float(guidance_scale)
        terms = self._terms(attributes, lambda_ref, attribute_scale, act_t)
        cond = model.encode_prompt(prompts)
        negs = negative_prompt if negative_prompt is not None else ""
        negs = [negs] * batch if isinstance(negs, str) else list(negs)
        uncond = model.encode_prompt(negs)
        if isinstance(edge_image, str) and edge_image == "self":
            if height is None or width is None:
                raise ValueError("edge_image='self' needs height= and width=")
            state = generator.get_state() if generator is not None else None
            first = self.__call__(prompts, edge_image=torch.zeros(1, 3, height, width), attributes=None,
                                  num_inference_steps=steps, guidance_scale=w1, negative_prompt=negs,
                                  controlnet_conditioning_scale=0.0, generator=generator, latents=latents,
                                  output_type="pt")
            if generator is not None and state is not None:
                generator.set_state(state)
            edges = self._edges_from(first.images)
        elif edge_image is not None:
            edges = self._image_tensor(edge_image)
        elif image is not None:
            edges = self._edges_from(self._image_tensor(image))
        else:
            raise ValueError("pass the edge map (edge_image=), an image to take edges from (image=), or "
                             "edge_image='self' (edges of a first λ_ref pass)")
        edges = edges.to(model.device)
        h, w = edges.shape[-2:]
        if height is not None and width is not None and (height, width) != (h, w):
            raise ValueError(f"height×width {height}×{width} differs from the edge map's {h}×{w}")
        model.check_size(h, w)
        x = latents if latents is not None else model.prepare_noise(batch, h, w, generator=generator)
        sched = model.schedule(steps, height=h, width=w)
        callback = None
        if callback_on_step_end is not None:
            def callback(i: int, x_next: Tensor, out: Tensor) -> None:
                callback_on_step_end(i, x_next)
        out = sample(model, x.to(model.device), sched, cond, w1=w1, terms=terms, uncond=uncond, control_image=edges,
                     controlnet_scale=controlnet_conditioning_scale, callback=callback)
        images = self._decode(out, output_type, h, w)
        info = {"steps": steps, "w1": w1, "w2": attribute_scale, "act_t": act_t,
                "attributes": {t.net: torch.as_tensor(t.lam).tolist() for t in terms},
                "lambda_ref": {t.net: (None if t.lam_ref is None else torch.as_tensor(t.lam_ref).tolist()) for t in terms},
                "networks": {n: net.fingerprint() for n, net in self.attributes.items()}}
        result = StyleAttrOutput(images=images, latents=out, edges=edges, info=info)
        return result if return_dict else (images,)

    # real images --------------------------------------------------------------------------------------------------
    def invert(self, image: Any, prompt: str = "", *, method: str = "null_param", num_inference_steps: int | None = None,
               guidance_scale: float | None = None, attributes_used: Sequence[str] | None = None,
               lambda_ref: dict[str, float] | None = None, num_inner_steps: int = 10, edge_image: Any = None,
               attribute_scale: float = 1.0) -> InversionResult:
        """Invert a real image for later edits: ``"null_param"`` (optimise the λ_ref tokens, §2.6), ``"plain"``
        (CFG-1 pivot) or ``"directedit"`` (exact, flow models). ``attributes_used``: the networks whose λ_ref
        tokens become the null (default all loaded)."""
        model = self.model
        img = self._image_tensor(image).to(model.device)
        model.check_size(*img.shape[-2:])
        edges = self._image_tensor(edge_image) if edge_image is not None else self._edges_from(img)
        steps = num_inference_steps or default_steps(model)
        w1 = default_cfg(model) if guidance_scale is None else float(guidance_scale)
        nets = self.attributes
        names = list(attributes_used) if attributes_used is not None else list(nets)
        for n in names:
            if n not in nets:
                raise KeyError(f"attributes_used names {n!r}, which is not loaded (loaded: {sorted(nets)})")
        refs = parse_attributes(lambda_ref, nets)
        terms = [AttributeTerm(n, refs.get(n, 0.0), refs.get(n), scale=attribute_scale, act_t=0.0) for n in names]
        x0 = model.encode_image(img)
        cond = model.encode_prompt([prompt] * img.shape[0])
        uncond = model.encode_prompt([""] * img.shape[0])
        sched = model.schedule(steps, height=img.shape[-2], width=img.shape[-1])
        edges = edges.to(model.device)
        if method == "null_param":
            return null_parameter_inversion(model, x0, sched, cond, terms, w1=w1, uncond=uncond, control_image=edges,
                                            num_inner_steps=num_inner_steps)
        if method == "plain":
            return plain_inversion(model, x0, sched, cond, w1=w1, uncond=uncond, control_image=edges, terms=terms)
        if method == "directedit":
            return directedit_inversion(model, x0, sched, cond, w1=w1, uncond=uncond, control_image=edges, terms=terms)
        raise ValueError(f"method must be 'null_param', 'plain' or 'directedit', got {method!r}")

    @torch.no_grad()
    def edit(self, inversion: InversionResult, attributes: dict[str, float] | None = None, *,
             attribute_scale: float = 1.0, act_t: float = 0.0, output_type: str = "pil") -> StyleAttrOutput:
        """Edit an inverted image with sliders (λ_ref is the inversion's)."""
        terms = self._terms(attributes, None, attribute_scale, act_t)
        refs = {rec["net"]: rec["lam_ref"] for rec in inversion.terms}
        terms = [AttributeTerm(t.net, t.lam, refs.get(t.net), t.scale, t.act_t) for t in terms]
        out = edit_inverted(self.model, inversion, terms)
        h, w = inversion.control_image.shape[-2:]
        return StyleAttrOutput(images=self._decode(out, output_type, h, w), latents=out, edges=inversion.control_image,
                               info={"method": inversion.method, "attributes": {t.net: torch.as_tensor(t.lam).tolist()
                                                                                 for t in terms}})
