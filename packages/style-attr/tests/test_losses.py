"""The training objective (§2.4): the regulariser on a hand-computed example (§7 test 9), oracle targets and the
one-step update against flowcore's step (10), the flow port's Euler step (18)."""

from __future__ import annotations

import math

import pytest
import torch

from flowcore.sampling import step as flow_step
from flowcore.schedules import make_schedule
from style_attr.losses import attribute_loss, pair_schedule, regulariser, regulariser_weight, training_target


def _example():
    """B=2, C=2, H=W=2 latents with targets that agree at some pixels and not at others."""
    g = torch.Generator().manual_seed(0)
    y_0 = torch.randn(2, 2, 2, 2, generator=g)
    y_k = y_0.clone()
    y_k[0, :, 0, 0] += torch.tensor([0.5, -1.0])     # differs at pixel (0,0) of sample 0
    y_k[1, 1, 1, 1] += 2.0                           # and pixel (1,1) of sample 1
    noise = torch.randn(2, 2, 2, 2, generator=g)
    o_k = torch.randn(2, 2, 2, 2, generator=g)
    o_0 = torch.randn(2, 2, 2, 2, generator=g)
    a, s = torch.tensor([0.9, 0.6]), torch.tensor([math.sqrt(1 - 0.81), 0.8])
    a2, s2 = torch.tensor([0.95, 0.7]), torch.tensor([math.sqrt(1 - 0.95**2), math.sqrt(1 - 0.49)])
    return y_0, y_k, noise, o_k, o_0, a, s, a2, s2


def _hand_ddim(z, o, a, s, a2, s2):
    """The DDIM (eta 0) update written out elementwise with Python floats."""
    out = torch.empty_like(z)
    for b in range(z.shape[0]):
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in z.shape[1:]]):
            c, h, w = (int(v) for v in idx)
            x0 = (float(z[b, c, h, w]) - float(s[b]) * float(o[b, c, h, w])) / float(a[b])
            out[b, c, h, w] = float(a2[b]) * x0 + float(s2[b]) * float(o[b, c, h, w])
    return out


@pytest.mark.parametrize("reg_input", ["paired", "shared"])
@pytest.mark.parametrize("weighting", ["elementwise", "global"])
def test_regulariser_matches_a_hand_computed_example(weighting, reg_input):
    """Test 9: both weightings and both regulariser inputs on a 2×2×2×2 example, against explicit loops."""
    y_0, y_k, noise, o_k, o_0, a, s, a2, s2 = _example()
    col = (-1, 1, 1, 1)
    z_k = a.view(col) * y_k + s.view(col) * noise
    z_0 = z_k if reg_input == "shared" else a.view(col) * y_0 + s.view(col) * noise
    terms = attribute_loss(o_k, y_k, z_k, noise, a, s, kind="eps", family="vp", beta=5.0, o_0=o_0, z_0=z_0, y_0=y_0,
                           a_next=a2, s_next=s2, weighting=weighting)
    zk_hat, z0_hat = _hand_ddim(z_k, o_k, a, s, a2, s2), _hand_ddim(z_0, o_0, a, s, a2, s2)
    diff = (zk_hat - z0_hat).abs()
    if weighting == "elementwise":
        total = 0.0
        for b in range(2):
            for h in range(2):
                for w in range(2):
                    wt = 1.0 / (1.0 + sum(float(y_k[b, c, h, w] - y_0[b, c, h, w]) ** 2 for c in range(2)))
                    total += sum(wt * float(diff[b, c, h, w]) for c in range(2))
        want = total / diff.numel()
    else:
        want = 0.0
        for b in range(2):
            want += float(diff[b].mean()) / (1.0 + float(((y_k[b] - y_0[b]) ** 2).sum()))
        want /= 2
    assert abs(float(terms.reg) - want) <= 1e-6
    assert abs(float(terms.base) - float(((o_k - noise) ** 2).mean())) <= 1e-6
    assert abs(float(terms.total) - (float(terms.base) + 5.0 * want)) <= 1e-5


def test_regulariser_weight_properties():
    """Test 9: L_reg = 0 for equal targets and a λ-blind network; w = 1 where targets agree, < 1 elsewhere; no
    gradient flows through w."""
    y_0, y_k, noise, o_k, _, a, s, a2, s2 = _example()
    w = regulariser_weight(y_k, y_0)
    assert w.shape == (2, 1, 2, 2)
    agree = (y_k == y_0).all(dim=1, keepdim=True)
    assert torch.equal(w[agree], torch.ones_like(w[agree]))
    assert (w[~agree] < 1).all() and (~agree).sum() == 2
    z = a.view(-1, 1, 1, 1) * y_0 + s.view(-1, 1, 1, 1) * noise
    terms = attribute_loss(o_k, y_0, z, noise, a, s, kind="eps", family="vp", beta=5.0, o_0=o_k, z_0=z, y_0=y_0,
                           a_next=a2, s_next=s2)
    assert float(terms.reg) == 0.0
    yk = y_k.clone().requires_grad_(True)
    zhat = torch.randn(2, 2, 2, 2, requires_grad=True)
    reg = regulariser(zhat, torch.zeros(2, 2, 2, 2), yk, y_0)
    reg.backward()
    assert yk.grad is None and zhat.grad is not None
    assert not regulariser_weight(yk, y_0).requires_grad


@pytest.mark.parametrize(("kind", "family"), [("eps", "vp"), ("v", "vp"), ("flow", "rf")])
def test_oracle_network_has_zero_base_loss(kind, family):
    """Test 10: a network that returns the exact target has L_base = 0 for ε, v and flow."""
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 4, 4, 4, generator=g)
    noise = torch.randn(3, 4, 4, 4, generator=g)
    if family == "vp":
        a = torch.tensor([0.9, 0.5, 0.1])
        s = (1 - a**2).sqrt()
    else:
        s = torch.tensor([0.1, 0.5, 0.9])
        a = 1 - s
    z = a.view(-1, 1, 1, 1) * y + s.view(-1, 1, 1, 1) * noise
    # the oracle: the output that maps z back to (y, noise) exactly
    oracle = {"eps": noise, "v": a.view(-1, 1, 1, 1) * noise - s.view(-1, 1, 1, 1) * y, "flow": noise - y}[kind]
    terms = attribute_loss(oracle, y, z, noise, a, s, kind=kind, family=family, beta=0.0)
    assert float(terms.base) <= 1e-6
    assert torch.equal(training_target(y, noise, a, s, kind), oracle)
    wrong = attribute_loss(oracle + 0.1, y, z, noise, a, s, kind=kind, family=family, beta=0.0)
    assert float(wrong.base) > 1e-3


@pytest.mark.parametrize("family", ["vp", "rf"])
def test_regulariser_step_is_flowcores_step(family):
    """Tests 10 and 18: the per-sample two-point step equals flowcore's step on a real grid (DDIM for VP, Euler for
    flow) point for point."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    sched = make_schedule(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        set_alpha_to_one=False, steps_offset=1) if family == "vp" else
                          FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    kind = "eps" if family == "vp" else "flow"
    g = torch.Generator().manual_seed(2)
    z, out = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    points = [0, 4, 8]
    grid = pair_schedule(family, sched.a[points], sched.s[points], sched.a[[p + 1 for p in points]],
                         sched.s[[p + 1 for p in points]], z)
    mine = flow_step(z, out, grid, 0, 1, kind=kind)
    for row, p in enumerate(points):
        ref = flow_step(z[row:row + 1], out[row:row + 1], sched, p, p + 1, kind=kind)
        assert (mine[row:row + 1] - ref).abs().max() <= 1e-6
    if family == "rf":  # the Euler update written out
        dt = (sched.sigmas[[p + 1 for p in points]] - sched.sigmas[points]).view(-1, 1, 1, 1)
        assert (mine - (z + dt * out)).abs().max() <= 1e-6


def test_anchor_reference_adds_the_base_loss_of_the_reference_rows():
    """With ``anchor_reference`` L_base averages the λ_k rows' and the λ = 0 rows' own base losses; L_reg is
    unchanged."""
    y_0, y_k, noise, o_k, o_0, a, s, a2, s2 = _example()
    col = (-1, 1, 1, 1)
    z_k, z_0 = a.view(col) * y_k + s.view(col) * noise, a.view(col) * y_0 + s.view(col) * noise
    kw = dict(kind="eps", family="vp", beta=5.0, o_0=o_0, z_0=z_0, y_0=y_0, a_next=a2, s_next=s2)
    plain = attribute_loss(o_k, y_k, z_k, noise, a, s, **kw)
    anchored = attribute_loss(o_k, y_k, z_k, noise, a, s, anchor_reference=True, **kw)
    want = 0.5 * (float(((o_k - noise) ** 2).mean()) + float(((o_0 - noise) ** 2).mean()))
    assert abs(float(anchored.base) - want) <= 1e-6
    assert float(anchored.reg) == float(plain.reg)
    assert abs(float(anchored.total) - (want + 5.0 * float(plain.reg))) <= 1e-5


@pytest.mark.parametrize("family", ["vp", "rf"])
def test_the_reference_branch_learns_the_reference_only_when_anchored(family):
    """The mechanism behind ``anchor_reference``: fit the λ = 0 branch's output o_0 alone (o_k fixed at its exact
    target) with paired inputs. Anchored, its x0 prediction lands on y_0. Unanchored, only L_reg trains it, and its
    L1 pull towards ẑ_0 = ẑ_k drives x0̂_0 past y_k (the attribute, amplified, at λ = 0)."""
    g = torch.Generator().manual_seed(3)
    y_0 = torch.rand(4, 3, 8, 8, generator=g)
    y_k = y_0.clone()
    y_k[:, :, 2:4, :] = 0.05  # a dark band: the "outline" the attribute adds
    noise = torch.randn(4, 3, 8, 8, generator=g)
    kind = "eps" if family == "vp" else "flow"
    if family == "vp":
        a, a2 = torch.full((4,), 0.7), torch.full((4,), 0.72)
        s, s2 = (1 - a**2).sqrt(), (1 - a2**2).sqrt()
    else:
        s, s2 = torch.full((4,), 0.5), torch.full((4,), 0.5 - 1 / 28)
        a, a2 = 1 - s, 1 - s2
    col = (-1, 1, 1, 1)
    z_k, z_0 = a.view(col) * y_k + s.view(col) * noise, a.view(col) * y_0 + s.view(col) * noise
    o_k = training_target(y_k, noise, a, s, kind)
    change = (y_k - y_0).flatten()

    def fit(anchor: bool) -> torch.Tensor:
        o_0 = training_target(y_0, noise, a, s, kind).clone().requires_grad_(True)  # start at the truth
        opt = torch.optim.Adam([o_0], lr=0.02)
        for _ in range(300):
            opt.zero_grad()
            attribute_loss(o_k, y_k, z_k, noise, a, s, kind=kind, family=family, beta=5.0, o_0=o_0, z_0=z_0,
                           y_0=y_0, a_next=a2, s_next=s2, anchor_reference=anchor).total.backward()
            opt.step()
        o = o_0.detach()
        x0 = (z_0 - s.view(col) * o) / a.view(col) if kind == "eps" else z_0 - s.view(col) * o
        return (x0 - y_0).flatten()

    anchored, free = fit(True), fit(False)
    along = {name: float(torch.dot(x, change) / change.norm() ** 2) for name, x in (("anchored", anchored),
                                                                                     ("free", free))}
    # anchored: a small pull remains (w does not vanish where the targets differ); unanchored: x0̂_0 moves along the
    # attribute's own change, and further than the change itself
    assert along["anchored"] < 0.3 and along["free"] > 1.0
    assert float(anchored.abs().max()) < 0.3 * float(change.abs().max())
