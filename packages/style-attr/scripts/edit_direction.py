"""Does a trained attribute network push images the way its filter does? A one-call check, no sampling.

For held-out renditions (content image, edge map, target ``y_k`` at the record's λ_k, reference ``y_0`` at λ = 0) it
noises ``y_0`` at a few noise levels and reports, per level:

- ``cos``: cosine between the change of the clean-image prediction that the composition adds,
  ``x̂0(λ_k) − x̂0(0)`` (same input, same prompt), and the filter's own change ``y_k − y_0``. A network that learned
  the attribute gives a clearly positive value; a negative one means the composed edit runs backwards.
- ``scale``: ``|x̂0(λ_k) − x̂0(0)| / |y_k − y_0|``.
- the base loss (input noised from ``y_k``, the training objective) at the record's own λ_k, at λ = 0.01 and at λ = 0:
  a λ = 0 value far above the λ = 0.01 one means the λ = 0 branch is not the low end of a smooth slider.

    python packages/style-attr/scripts/edit_direction.py --model toy-sd3 --data runs/outline-data [--net DIR]
"""

from __future__ import annotations

import argparse

import torch


def noise_level(model, sigma: float, n: int) -> tuple[torch.Tensor, float, float]:
    """(timesteps (n,), a, s) at relative noise level ``sigma`` for the model's path."""
    if model.family == "rf":
        return torch.full((n,), sigma * 1000.0), 1.0 - sigma, sigma
    step = int(sigma * 999)
    alpha_bar = float(model.scheduler.alphas_cumprod[step])
    return torch.full((n,), float(step)), alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy-sd3", help="toy name (toy-sd3 or toy-unet; default toy-sd3)")
    parser.add_argument("--net", help="attribute network folder (default: the committed <model>-outline asset)")
    parser.add_argument("--data", required=True,
                        help="dataset folder (`style-attr build-dataset --toy 1024 --family outline --output-dir DIR`)")
    parser.add_argument("--records", type=int, default=64, help="content images used, rendition 0 each (default 64)")
    parser.add_argument("--sigmas", default="0.8,0.5,0.3", help="relative noise levels (default 0.8,0.5,0.3)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    from style_attr.dataset import StyleDataset
    from style_attr.losses import training_target
    from style_attr.models import asset_path, load_base
    from style_attr.network import AttributeControlNet
    from style_attr.training import AttributeObjective, TrainConfig

    model = load_base(args.model, device="cpu")
    net = AttributeControlNet.from_pretrained(args.net or asset_path(f"{args.model}-outline"), model.controlnet,
                                              name="attr")
    data = StyleDataset(args.data)
    count = min(args.records, data.num_content)
    batch = data.batch([i * data.renditions for i in range(count)])
    objective = AttributeObjective(model, net, TrainConfig(data=args.data, output_dir=".", model=args.model))
    y_k, y_0 = objective.latents(batch)
    lam, edges = batch["lam"], batch["edges"]
    cond = model.encode_prompt(batch["captions"])
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for sigma in (float(v) for v in args.sigmas.split(",")):
        t, a, s = noise_level(model, sigma, count)
        noise = torch.randn(y_k.shape, generator=generator)
        with torch.no_grad():
            z = a * y_0 + s * noise
            delta = objective.predict(z, t, cond, edges, lam) - objective.predict(z, t, cond, edges, lam * 0)
            if model.prediction not in ("flow", "eps"):
                raise SystemExit(f"prediction {model.prediction!r} is not handled (flow and eps are)")
            dx0 = -s * delta if model.prediction == "flow" else -s * delta / a  # x̂0 = z − s·v, (z − s·ε)/a
            change = y_k - y_0
            cos = torch.nn.functional.cosine_similarity(dx0.flatten(1), change.flatten(1)).mean()
            scale = dx0.flatten(1).norm(dim=1).mean() / change.flatten(1).norm(dim=1).mean()
            z_k = a * y_k + s * noise
            target = training_target(y_k, noise, torch.full((count,), a), torch.full((count,), s), model.prediction)
            loss = {name: float(((objective.predict(z_k, t, cond, edges, value) - target) ** 2).mean())
                    for name, value in (("own", lam), ("0.01", torch.full_like(lam, 0.01)), ("0", lam * 0))}
        rows.append({"sigma": sigma, "cos": float(cos), "scale": float(scale), "loss": loss})
        print(f"σ {sigma:.2f}  cos(x̂0(λ)−x̂0(0), y_k−y_0) {float(cos):+.3f}  scale {float(scale):.2f}  "
              f"base loss at own λ {loss['own']:.4f}, λ=0.01 {loss['0.01']:.4f}, λ=0 {loss['0']:.4f}")
    result = {"model": args.model, "net": str(args.net or asset_path(f"{args.model}-outline")), "records": count,
              "rows": rows}
    if args.json:
        from flowcore.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
