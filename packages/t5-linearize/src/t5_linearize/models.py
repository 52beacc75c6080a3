"""The linearized transformer classes, ``linearize`` and parameter bookkeeping (spec §4.3, §5).

``T5SD3Transformer2DModel`` / ``T5FluxTransformer2DModel`` subclass the diffusers classes: their ``__init__`` takes the
base parameters plus ``ttt_config`` (registered in ``config.json``), installs a TTT processor on every selected site
through ``flowcore.attention.install``, and their ``forward`` builds the token layout (``ttt_layout``) so stock
pipelines and training loops need no change. New parameters live in the processors
(``transformer_blocks.3.attn2.processor.ttt.w1``), so ``save_pretrained`` / ``from_pretrained`` carry them.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from flowcore.attention import SiteInfo, install, list_sites
from t5_linearize.config import LinearizeConfig
from t5_linearize.layouts import flux_layout, sd3_layout
from t5_linearize.modules import new_parameter_count
from t5_linearize.processors import _TTTSiteProcessor, processor_for

__all__ = [
    "NEW_PARAMETER_MARKER",
    "T5FluxTransformer2DModel",
    "T5SD3Transformer2DModel",
    "check_same_base",
    "count_new_parameters",
    "expected_new_parameters",
    "frozen_modules",
    "is_linearized",
    "linearize",
    "param_groups",
]

NEW_PARAMETER_MARKER = ".processor.ttt."
_GROUPS = {"w1": "fast_weights", "w2": "fast_weights", "w3": "fast_weights", "q_conv": "locality",
           "k_conv": "locality", "q_scale": "affine", "q_shift": "affine", "k_scale": "affine", "k_shift": "affine"}
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")


def _package_version() -> str:
    from t5_linearize import __version__

    return __version__


# --- site selection ------------------------------------------------------------------------------------------------
def _matches(info: SiteInfo, pattern: str) -> bool:
    return info.kind == pattern or fnmatch.fnmatchcase(info.name, pattern) or fnmatch.fnmatchcase(info.block, pattern)


def select_sites(sites: Mapping[str, SiteInfo], config: LinearizeConfig) -> list[str]:
    """Site names matched by ``config.sites`` and by none of ``config.exclude_sites`` (names, blocks or kinds)."""
    for pattern in (*config.sites, *config.exclude_sites):
        if not any(_matches(info, pattern) for info in sites.values()):
            examples = ", ".join(list(sites)[:3])
            raise ValueError(f"site pattern {pattern!r} matches no attention site (e.g. {examples}; kinds "
                             f"{sorted({s.kind for s in sites.values()})})")
    return [name for name, info in sites.items()
            if any(_matches(info, p) for p in config.sites) and not any(_matches(info, p) for p in config.exclude_sites)]


# --- the shared mixin ----------------------------------------------------------------------------------------------
class _T5Mixin:
    """Behaviour shared by the two linearized classes (processor setup, guards, bookkeeping, loading)."""

    _base_class: type[nn.Module]
    _forward_signature: inspect.Signature

    # setup ---------------------------------------------------------------------------------------------------
    def _setup_ttt(self, ttt_config: Mapping[str, Any] | LinearizeConfig | None) -> None:
        config = LinearizeConfig.from_dict(_strip_private(ttt_config))
        self.linearize_config = config
        sites = list_sites(self)  # type: ignore[arg-type]
        selected = set(select_sites(sites, config))
        stock = config.replace(operator="softmax", preset=None)
        processors = {name: processor_for(info, config if name in selected else stock) for name, info in sites.items()}
        install(self, processors)  # type: ignore[arg-type]
        self.frozen = frozen_modules(self)  # type: ignore[arg-type]
        for name in self.frozen:
            self.get_submodule(name).requires_grad_(False)  # type: ignore[attr-defined]

    # bookkeeping ----------------------------------------------------------------------------------------------
    def ttt_processors(self) -> dict[str, _TTTSiteProcessor]:
        """Linearized sites (processors holding a TTT layer), keyed by site name."""
        return {name: p for name, p in self.attn_processors.items()  # type: ignore[attr-defined]
                if isinstance(p, _TTTSiteProcessor) and p.ttt is not None}

    def new_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of every parameter added by the conversion."""
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            if NEW_PARAMETER_MARKER in name:
                yield name, param

    def inherited_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of every pretrained parameter (shared with, or loaded from, the base model)."""
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            if NEW_PARAMETER_MARKER not in name:
                yield name, param

    def conversion_record(self) -> dict[str, Any]:
        """What a conversion wrote: config, new-parameter counts (measured and per §2.3), sites, frozen modules."""
        return {
            "class": type(self).__name__,
            "base_class": self._base_class.__name__,
            "base_config": base_config(self),  # type: ignore[arg-type]
            "ttt_config": self.linearize_config.to_dict(),
            "linearized_sites": sorted(self.ttt_processors()),
            "new_parameters": count_new_parameters(self),  # type: ignore[arg-type]
            "new_parameters_formula": expected_new_parameters(self),  # type: ignore[arg-type]
            "frozen_modules": list(self.frozen),
        }

    # guards (spec §4.3): processor swaps would drop the TTT parameters ------------------------------------------
    def set_attn_processor(self, processor: Any, force: bool = False) -> None:
        """diffusers' ``set_attn_processor``, refusing to replace a TTT processor unless ``force=True``."""
        if not force:
            ttt = self.ttt_processors()
            kept = processor if isinstance(processor, Mapping) else {}
            dropped = [name for name, proc in ttt.items() if kept.get(name) is not proc]
            if dropped:
                raise RuntimeError(
                    f"set_attn_processor would replace {len(dropped)} TTT processor(s) (e.g. {dropped[0]}) and drop "
                    "their learned parameters; this model is linearized. Install processors on other sites only, "
                    "or pass force=True if you really want the stock attention back"
                )
        super().set_attn_processor(processor)  # type: ignore[misc]

    def set_default_attn_processor(self, force: bool = False) -> None:
        """Refused on a linearized model unless ``force=True`` (then every site gets its stock processor)."""
        if not force:
            raise RuntimeError("set_default_attn_processor would drop the TTT layers of this linearized model; "
                               "pass force=True to get a (parameter-less) stock model back")
        self.set_attn_processor({name: _stock_processor(self, name) for name in self.attn_processors},  # type: ignore[attr-defined]
                                force=True)

    def fuse_qkv_projections(self, force: bool = False) -> None:
        """Refused: fusing swaps every processor (dropping the TTT layers); TTT calls ``to_q/to_k/to_v`` itself."""
        if not force:
            raise RuntimeError("fuse_qkv_projections would replace the TTT processors of this linearized model "
                               "(dropping their parameters); pass force=True to fuse anyway")
        self.set_attn_processor(dict(self.attn_processors), force=True)  # type: ignore[attr-defined]
        super().fuse_qkv_projections()  # type: ignore[misc]

    # forward ---------------------------------------------------------------------------------------------------
    def _bind_forward(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        bound = self._forward_signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        jak = dict(arguments.get("joint_attention_kwargs") or {})
        if jak.get("ttt_layout") is None:
            jak["ttt_layout"] = self._build_layout(arguments)
        arguments["joint_attention_kwargs"] = jak
        return arguments

    def _build_layout(self, arguments: dict[str, Any]):  # pragma: no cover - each class defines it
        raise NotImplementedError

    # loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """diffusers' ``from_pretrained`` for a *linearized* transformer folder (``config.json`` with
        ``ttt_config``); an unconverted folder raises (use :meth:`from_softmax`)."""
        if Path(pretrained_model_name_or_path).is_file():
            raise ValueError(f"{pretrained_model_name_or_path} is a file; pass the folder that holds it (config.json "
                             "and the safetensors, e.g. the --output-dir of `t5-linearize convert`)")
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, **hub)  # type: ignore[attr-defined]
        class_name = config.get("_class_name")
        if config.get("ttt_config") is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds an unconverted transformer ({class_name}, no ttt_config in "
                f"config.json); convert it with {cls.__name__}.from_softmax(...) or `t5-linearize convert`"
            )
        if class_name != cls.__name__:
            raise ValueError(f"{pretrained_model_name_or_path} holds a {class_name}, not a {cls.__name__}; load it "
                             f"with {class_name}.from_pretrained")
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[misc]
        for name in model.frozen:
            model.get_submodule(name).requires_grad_(False)
        return model

    @classmethod
    def from_softmax(cls, model_or_id: nn.Module | str | os.PathLike, config: LinearizeConfig | None = None, *,
                     torch_dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
                     **hub_kwargs: Any):
        """Linearize a stock transformer given as a module, a toy name (``toy-sd3``), a local folder (a
        transformer folder or a pipeline folder with ``transformer/``) or a hub id (``subfolder`` defaults to
        ``transformer``)."""
        if isinstance(model_or_id, nn.Module):
            base = model_or_id
        else:
            base = _load_base(cls._base_class, str(model_or_id), torch_dtype, hub_kwargs)
        if torch_dtype is not None:
            base = base.to(torch_dtype)
        if not isinstance(base, cls._base_class):
            raise TypeError(f"{cls.__name__}.from_softmax needs a {cls._base_class.__name__}, got {type(base).__name__}")
        return linearize(base, config or LinearizeConfig(), generator=generator)


def _strip_private(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: v for k, v in data.items() if not str(k).startswith("_")}
    return data


def _stock_processor(model: nn.Module, name: str) -> Any:
    if isinstance(model, SD3Transformer2DModel):
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        return JointAttnProcessor2_0()
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    return FluxAttnProcessor()


def _load_base(base_class: type, spec: str, torch_dtype: torch.dtype | None, hub_kwargs: dict) -> nn.Module:
    from flowcore.cli import resolve_model

    ref = resolve_model(spec)
    if ref.is_toy:
        from t5_linearize import toy

        return toy.load_bundle(ref.name).denoiser
    kwargs = dict(hub_kwargs)
    if "subfolder" not in kwargs:
        path = Path(spec)
        if ref.kind == "hub" or (path / "model_index.json").is_file() or (path / "transformer").is_dir():
            kwargs["subfolder"] = "transformer"
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    return base_class.from_pretrained(spec, **kwargs)


# --- the two classes ---------------------------------------------------------------------------------------------
def _linearized_init(base: type) -> Any:
    """``__init__(<base parameters>, ttt_config=None)`` with that exact signature, wrapped by register_to_config
    (a bare ``**kwargs`` would make ``from_config`` drop every base key)."""
    base_init = inspect.unwrap(base.__init__)
    signature = inspect.signature(base_init)

    def __init__(self, *args: Any, ttt_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self._setup_ttt(ttt_config)

    extra = inspect.Parameter("ttt_config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    __init__.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])  # type: ignore[attr-defined]
    return register_to_config(__init__)


class T5SD3Transformer2DModel(_T5Mixin, SD3Transformer2DModel):
    """SD3/SD3.5 MMDiT with TTT attention on every selected site (joint ``attn``, SD3.5-Medium ``attn2``)."""

    _base_class = SD3Transformer2DModel
    _forward_signature = inspect.signature(SD3Transformer2DModel.forward)
    __init__ = _linearized_init(SD3Transformer2DModel)

    def forward(self, *args: Any, **kwargs: Any):
        """The stock forward; ``joint_attention_kwargs["ttt_layout"]`` is built from ``hidden_states`` (latent grid
        / patch) and ``encoder_hidden_states`` (text length) unless the caller passes one."""
        return super().forward(**self._bind_forward(args, kwargs))

    def _build_layout(self, arguments: dict[str, Any]):
        hidden, text = arguments.get("hidden_states"), arguments.get("encoder_hidden_states")
        if hidden is None or text is None:
            raise ValueError("T5SD3Transformer2DModel.forward needs hidden_states and encoder_hidden_states")
        return sd3_layout(hidden, int(text.shape[1]), int(self.config.patch_size))


class T5FluxTransformer2DModel(_T5Mixin, FluxTransformer2DModel):
    """FLUX.1 / Kontext transformer with TTT attention on every selected double and single block."""

    _base_class = FluxTransformer2DModel
    _forward_signature = inspect.signature(FluxTransformer2DModel.forward)
    __init__ = _linearized_init(FluxTransformer2DModel)

    def forward(self, *args: Any, **kwargs: Any):
        """The stock forward; ``ttt_layout`` comes from ``txt_ids`` / ``img_ids`` (text first, then the target
        and any Kontext reference segment with its own grid) unless the caller passes one."""
        return super().forward(**self._bind_forward(args, kwargs))

    def _build_layout(self, arguments: dict[str, Any]):
        txt_ids, img_ids = arguments.get("txt_ids"), arguments.get("img_ids")
        if txt_ids is None or img_ids is None:
            raise ValueError("T5FluxTransformer2DModel.forward needs txt_ids and img_ids (the token layout)")
        layout = flux_layout(txt_ids, img_ids)
        hidden, text = arguments.get("hidden_states"), arguments.get("encoder_hidden_states")
        if hidden is not None and text is not None and layout.total != hidden.shape[1] + text.shape[1]:
            raise ValueError(f"txt_ids/img_ids describe {layout.total} tokens but the inputs have "
                             f"{text.shape[1]} text + {hidden.shape[1]} image tokens")
        return layout


_LINEARIZED = {SD3Transformer2DModel: T5SD3Transformer2DModel, FluxTransformer2DModel: T5FluxTransformer2DModel}
# Saved pipelines record the class's module in model_index.json: give the public, stable top-level path.
for _cls in (T5SD3Transformer2DModel, T5FluxTransformer2DModel):
    _cls.__module__ = "t5_linearize"


# --- conversion ----------------------------------------------------------------------------------------------------
def is_linearized(model: nn.Module) -> bool:
    return isinstance(model, _T5Mixin)


def base_config(model: nn.Module) -> dict[str, Any]:
    """The base-class constructor arguments of ``model`` (linearized or not), from its config."""
    base = model._base_class if isinstance(model, _T5Mixin) else type(model)
    names = [n for n in inspect.signature(inspect.unwrap(base.__init__)).parameters if n != "self"]
    return {n: model.config[n] for n in names if n in model.config}


def linearize(transformer: nn.Module, config: LinearizeConfig | None = None, *,
              generator: torch.Generator | None = None, copy: bool = False):
    """Replace the softmax attention of ``transformer`` by TTT layers; returns the linearized subclass.

    The result is built on the meta device and the pretrained tensors are loaded with ``assign=True``: they are
    **shared** with ``transformer`` (bit-identical, no copy) unless ``copy=True``. New parameters are initialised
    from ``generator`` (CPU draws, then moved to the model's device and dtype). Raises ``TypeError`` for a class
    it cannot linearize and ``ValueError`` for an already linearized model or fused projections.
    """
    config = config or LinearizeConfig()
    if isinstance(transformer, _T5Mixin):
        raise ValueError("this transformer is already linearized; convert the unconverted base model instead")
    cls = next((t5 for base, t5 in _LINEARIZED.items() if type(transformer) is base), None)
    if cls is None:
        supported = ", ".join(b.__name__ for b in _LINEARIZED)
        raise TypeError(f"cannot linearize a {type(transformer).__name__}: supported classes are {supported} "
                        "(UNets, Qwen-Image and other DiTs are out of scope for v1)")
    if any(getattr(m, "fused_projections", False) for m in transformer.modules()):
        raise ValueError("this transformer has fused QKV projections; call unfuse_qkv_projections() first")
    kwargs = base_config(transformer)
    ttt_config = {**config.to_dict(), "_t5_linearize_version": _package_version()}
    with torch.device("meta"):
        model = cls(**kwargs, ttt_config=ttt_config)
    state = transformer.state_dict()
    if copy:
        state = {name: tensor.clone() for name, tensor in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    new_names = {name for name, _ in model.named_parameters() if NEW_PARAMETER_MARKER in name}
    if unexpected or set(missing) != new_names:
        raise RuntimeError(f"conversion mismatch: unexpected {sorted(unexpected)[:5]}, missing inherited "
                           f"{sorted(set(missing) - new_names)[:5]}")
    _copy_missing_buffers(model, transformer)
    reference = next(transformer.parameters())
    init_device = generator.device if generator is not None else torch.device("cpu")
    for name in sorted(model.ttt_processors()):
        layer = model.ttt_processors()[name].ttt
        layer.to_empty(device=init_device)
        layer.to(torch.float32)
        layer.reset_parameters(generator)
        layer.to(device=reference.device, dtype=reference.dtype)
    for name in model.frozen:
        model.get_submodule(name).requires_grad_(False)
    model.train(transformer.training)
    if getattr(transformer, "gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    model.register_to_config(_name_or_path=transformer.config.get("_name_or_path", ""))
    return model


def _copy_missing_buffers(model: nn.Module, source: nn.Module) -> None:
    """Non-persistent buffers are not in the state dict: take them from ``source``."""
    source_buffers = dict(source.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[leaf] = source_buffers[name]


def frozen_modules(model: nn.Module) -> list[str]:
    """Modules that never reach the loss: the last SD3 block's text query (``add_q_proj``, ``norm_added_q``), whose
    output rows the ``context_pre_only`` block discards. Frozen so DDP needs no ``find_unused_parameters``."""
    if not isinstance(model, SD3Transformer2DModel) or not len(model.transformer_blocks):
        return []
    index = len(model.transformer_blocks) - 1
    attn = model.transformer_blocks[index].attn
    if not getattr(attn, "context_pre_only", False):
        return []
    names = [f"transformer_blocks.{index}.attn.{part}" for part in ("add_q_proj", "norm_added_q")]
    return [n for n in names if _has_parameters(model, n)]


def _has_parameters(model: nn.Module, name: str) -> bool:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return module is not None and any(True for _ in module.parameters())


def count_new_parameters(model: nn.Module) -> int:
    """Number of parameters added by the conversion (0 for an unconverted model)."""
    return sum(p.numel() for name, p in model.named_parameters() if NEW_PARAMETER_MARKER in name)


def expected_new_parameters(model: nn.Module) -> int:
    """§2.3's formula summed over the linearized sites (checked against :func:`count_new_parameters`)."""
    if not isinstance(model, _T5Mixin):
        return 0
    return sum(new_parameter_count(p.config, p.site.heads, p.site.head_dim) for p in model.ttt_processors().values())


def param_groups(model: nn.Module, lr: float, *, new_lr_mult: float = 10.0,
                 group_mults: Mapping[str, float] | None = None, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups (trainable parameters only): ``inherited`` at ``lr``; ``fast_weights`` (w1/w2/w3),
    ``locality`` (q_conv/k_conv) and ``affine`` at ``lr·new_lr_mult``; ``group_mults`` overrides a group's
    multiplier. Each dict has ``name``, ``params``, ``lr``, ``weight_decay``; empty groups are left out."""
    mults = {"inherited": 1.0, "fast_weights": new_lr_mult, "locality": new_lr_mult, "affine": new_lr_mult}
    for key, value in (group_mults or {}).items():
        if key not in mults:
            raise ValueError(f"unknown parameter group {key!r}; groups are {sorted(mults)}")
        mults[key] = float(value)
    grouped: dict[str, list[nn.Parameter]] = {key: [] for key in mults}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if NEW_PARAMETER_MARKER in name:
            leaf = name.split(NEW_PARAMETER_MARKER, 1)[1].split(".")[0]
            grouped[_GROUPS.get(leaf, "fast_weights")].append(param)
        else:
            grouped["inherited"].append(param)
    return [{"name": key, "params": params, "lr": lr * mults[key], "weight_decay": weight_decay}
            for key, params in grouped.items() if params]


def check_same_base(t5_model: nn.Module, base: Mapping[str, Any] | nn.Module, where: str = "the base model") -> None:
    """Raise ``ValueError`` when the linearized model was converted from a transformer of another shape."""
    expected = base_config(base) if isinstance(base, nn.Module) else dict(base)
    actual = base_config(t5_model)
    diffs = {k: (actual[k], expected[k]) for k in actual if k in expected and _norm(actual[k]) != _norm(expected[k])}
    if diffs:
        text = ", ".join(f"{k}: {a!r} (linearized) vs {b!r} ({where})" for k, (a, b) in sorted(diffs.items()))
        raise ValueError(f"the linearized transformer does not match {where}: {text}. Load it with the base model it "
                         "was converted from, or convert this base with `t5-linearize convert`")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value
