"""Value injection through flowcore sites (T5, T6, T7, T11)."""

from __future__ import annotations

import pytest
import torch

from directedit import DirectEditConfig, ValueInjection, edit, invert
from directedit.injection import DirectEditProcessor, injection_sites, install_processors
from directedit.rows import CallState
from flowcore.attention import AttnContext, CallContext, SiteInfo, list_sites

N = 8


def _inputs(model, kind, seed=0):
    shape = (1, 16, 16) if kind == "flux" else (1, 4, 8, 8)
    z0 = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(model.dtype)
    return z0, model.encode_prompt(["a cat on a sofa"]), model.encode_prompt(["a dog on a sofa"])


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_injection_never_writes_the_source_row(kind, flux_factory, sd3_factory):
    """T5: with the source row free (unsnapped), its path is bitwise the same with injection on and off; the
    target differs by > 1e-4 when the prompts differ."""
    model = flux_factory() if kind == "flux" else sd3_factory()
    z0, src, tar = _inputs(model, kind)
    paths = {}
    results = {}
    for name, inj in (("on", ValueInjection(ratio=0.5)), ("off", None)):
        cfg = DirectEditConfig(num_steps=N, source_guidance=1.5, snap_source=False, injection=inj,
                               state_dtype=torch.float64)
        cache = invert(model, z0, src, config=cfg)
        seen = []
        results[name] = edit(model, cache, tar, config=cfg, callback=lambda k, x, seen=seen: seen.append(x[:1]))
        paths[name] = torch.cat(seen)
    assert results["on"].injection_log and not results["off"].injection_log
    assert torch.equal(paths["on"], paths["off"])
    assert float((results["on"].edited - results["off"].edited).abs().max()) > 1e-4


def test_flux_default_fires_in_single_blocks_for_exactly_k_steps(flux_factory):
    """T6 (FLUX): default = single-stream blocks only, steps 0..K-1 exactly; blocks='all' adds double blocks."""
    model = flux_factory()
    z0, src, tar = _inputs(model, "flux")
    singles = {n for n, s in list_sites(model.denoiser).items() if s.kind == "flux_single"}
    doubles = {n for n, s in list_sites(model.denoiser).items() if s.kind == "flux_double"}
    assert len(singles) == 2 and len(doubles) == 1
    cfg = DirectEditConfig(num_steps=20, injection=ValueInjection(ratio=0.15), state_dtype=torch.float64)
    res = edit(model, invert(model, z0, src, config=cfg), tar, config=cfg)
    assert res.K == 3
    assert {s for _, _, s in res.injection_log} == singles
    assert sorted({k for _, k, _ in res.injection_log}) == [0, 1, 2]
    assert len(res.injection_log) == 3 * len(singles)
    cfg_all = cfg.replace(injection=ValueInjection(ratio=0.15, blocks="all"))
    res_all = edit(model, invert(model, z0, src, config=cfg_all), tar, config=cfg_all)
    assert {s for _, _, s in res_all.injection_log} == singles | doubles
    cfg_glob = cfg.replace(injection=ValueInjection(steps=1, blocks=("single_transformer_blocks.1*",)))
    res_glob = edit(model, invert(model, z0, src, config=cfg_glob), tar, config=cfg_glob)
    assert {s for _, _, s in res_glob.injection_log} == {"single_transformer_blocks.1.attn.processor"}


def test_sd3_joint_attn_and_attn2_only_when_flagged(sd3_factory):
    """T6 (SD3): joint attn by default, attn2 only with include_attn2; K(0.15,30)=4, K(0.3,30)=9."""
    model = sd3_factory()
    joint = {n for n, s in list_sites(model.denoiser).items() if s.kind == "sd3_joint"}
    attn2 = {n for n, s in list_sites(model.denoiser).items() if s.kind == "sd3_attn2"}
    assert len(joint) == 2 and len(attn2) == 1
    assert set(injection_sites(model, ValueInjection())) == joint
    assert set(injection_sites(model, ValueInjection(include_attn2=True))) == joint | attn2
    assert ValueInjection(ratio=0.15).num_steps("flux", 30) == 4
    assert ValueInjection(ratio=0.3).num_steps("sd3", 30) == 9
    assert ValueInjection().num_steps("sd3", 30) == 9 and ValueInjection().num_steps("flux", 30) == 4
    assert ValueInjection(ratio=0.1).num_steps("sd3", 30) == 3 and ValueInjection(ratio=0.05).num_steps("sd3", 30) == 1
    z0, src, tar = _inputs(model, "sd3")
    for flag, expected in ((False, joint), (True, joint | attn2)):
        cfg = DirectEditConfig(num_steps=N, injection=ValueInjection(steps=2, include_attn2=flag),
                               state_dtype=torch.float64)
        res = edit(model, invert(model, z0, src, config=cfg), tar, config=cfg)
        assert {s for _, _, s in res.injection_log} == expected
        assert {k for _, k, _ in res.injection_log} == {0, 1}
    with pytest.raises(ValueError, match="FLUX blocks"):
        injection_sites(model, ValueInjection(blocks="single"))
    with pytest.raises(ValueError, match="match no attention site"):
        injection_sites(model, ValueInjection(blocks=("nothing.*",)))


def test_only_v_of_cond_targets_changes(sd3_factory, monkeypatch):
    """T6: in a real SD3 call, Q, K and every non-target (and uncond) row of V are bitwise unchanged, and
    V[c_tar] = V[c_src]; with rows='all' the uncond target row copies the uncond source row too."""
    model = sd3_factory()
    z0, src, tar = _inputs(model, "sd3")
    seen = []
    original = DirectEditProcessor.on_qkv

    def spy(self, q, k, v, ctx):
        q2, k2, v2 = original(self, q, k, v, ctx)
        if ctx.call is not None and ctx.call.state.get("directedit") is not None:
            seen.append((ctx.call.rows, q, k, v, q2, k2, v2))
        return q2, k2, v2

    monkeypatch.setattr(DirectEditProcessor, "on_qkv", spy)
    for rows in ("cond", "all"):
        seen.clear()
        cfg = DirectEditConfig(num_steps=N, source_guidance=2.0, injection=ValueInjection(steps=2, rows=rows),
                               state_dtype=torch.float64)
        edit(model, invert(model, z0, src, config=cfg), tar, config=cfg)
        calls = [s for s in seen if s[0].size == 4]
        assert len(calls) == 2 * 2  # K steps × 2 joint sites
        for plan, q, k, v, q2, k2, v2 in calls:
            assert plan.rows == ((-1, "uncond", 0), (0, "uncond", 0), (-1, "cond", 0), (0, "cond", 0))
            assert torch.equal(q2, q) and torch.equal(k2, k)
            assert torch.equal(v2[3], v[2]) and not torch.equal(v[3], v[2])
            assert torch.equal(v2[0], v[0]) and torch.equal(v2[2], v[2])
            if rows == "cond":
                assert torch.equal(v2[1], v[1])
            else:
                assert torch.equal(v2[1], v[0])


def test_processor_unit_replay_and_record():
    """The processor alone: inject pairs, replay from recorded Values, record source rows."""
    proc = DirectEditProcessor(inject=["s"])
    site = SiteInfo("s", "flux_single", 2, 4)
    q, k, v = (torch.randn(3, 5, 2, 4) for _ in range(3))
    store: dict = {}
    state = CallState(step=0, inject=(torch.tensor([1]), torch.tensor([0])), record=torch.tensor([0]), store=store,
                      log=[])
    ctx = AttnContext(site=site, call=CallContext(state={"directedit": state}), layout=None, rope=None, attn_bias=None)
    q2, k2, v2 = proc.on_qkv(q, k, v, ctx)
    assert q2 is q and k2 is k and torch.equal(v2[1], v[0]) and torch.equal(v2[2], v[2]) and torch.equal(v2[0], v[0])
    assert torch.equal(store["s"], v[:1]) and state.log == [("forward", 0, "s")]
    replay = CallState(step=0, replay=(torch.tensor([2]), torch.tensor([0])), values={"s": v[1:2] * 7})
    ctx.call.state["directedit"] = replay
    _, _, v3 = proc.on_qkv(q, k, v, ctx)
    assert torch.equal(v3[2], v[1] * 7) and torch.equal(v3[:2], v[:2])


@pytest.mark.parametrize("kind", ["sd3", "flux", "kontext"])
def test_default_processors_equal_stock_diffusers(kind, flux_factory, sd3_factory):
    """T7: with the DirectEdit processor installed and no state, the output is torch.equal to stock diffusers."""
    model = sd3_factory(torch.float32) if kind == "sd3" else flux_factory(torch.float32, kontext=kind == "kontext")
    z0, _src, _ = _inputs(model, "sd3" if kind == "sd3" else "flux")
    x = torch.cat([z0, torch.randn_like(z0)])
    cond = model.encode_prompt(["a cat", "a dog"])
    kw = {"guidance": torch.tensor([1.0, 2.0])}
    if kind == "kontext":
        kw["reference"] = torch.randn(1, 16, 16)
    sites = list(list_sites(model.denoiser))
    with torch.no_grad():
        stock = model.predict(x, 500.0, cond, **kw)
        with install_processors(model, inject=sites):
            ours = model.predict(x, 500.0, cond, **kw)
            state = CallState(step=5)  # a state without inject/replay/record: still stock
            ours_state = model.predict(x, 500.0, cond, ctx=CallContext(state={"directedit": state}), **kw)
        after = model.predict(x, 500.0, cond, **kw)
    assert torch.equal(ours, stock) and torch.equal(ours_state, stock) and torch.equal(after, stock)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_cached_and_auto_reproduce_batched(kind, dtype, flux_factory, sd3_factory):
    """T11: the three source-branch modes agree (≤ 1e-12 fp64, ≤ 1e-5 fp32); the Value cache holds K × sites
    tensors of B·kinds rows; a changed injection config raises."""
    model = flux_factory(dtype) if kind == "flux" else sd3_factory(dtype)
    z0, src, tar = _inputs(model, kind)
    base = DirectEditConfig(num_steps=N, source_guidance=1.5, injection=ValueInjection(ratio=0.5), state_dtype=dtype)
    cache = invert(model, z0, src, config=base.replace(source_branch="cached"))
    out = {mode: edit(model, cache, tar, config=base.replace(source_branch=mode)).edited
           for mode in ("batched", "auto", "cached")}
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float((out["auto"] - out["batched"]).abs().max()) <= tol
    assert float((out["cached"] - out["batched"]).abs().max()) <= tol
    sites = injection_sites(model, base.injection)
    assert sorted(cache.value_cache) == list(range(4))
    assert all(set(cache.value_cache[k]) == set(sites) for k in range(4))
    assert all(v.shape[0] == 1 for step in cache.value_cache.values() for v in step.values())
    assert cache.value_layout == [("cond", 0)]
    with pytest.raises(ValueError, match="recorded Values"):
        edit(model, cache, tar, config=base.replace(source_branch="cached", injection=ValueInjection(ratio=0.25)))
    plain = invert(model, z0, src, config=base)
    with pytest.raises(ValueError, match="needs Values recorded"):
        edit(model, plain, tar, config=base.replace(source_branch="cached"))
