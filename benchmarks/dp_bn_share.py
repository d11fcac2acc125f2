"""How much of a site's update BatchNorm's running statistics are, against the weights' (why ``privacy=dp``
refuses them: LocalDpMod clips the whole update as one vector).

``OMP_NUM_THREADS=1 python -m benchmarks.dp_bn_share [--steps 10] [--lr 0.01] [--size 64]``: an smp U-Net
(ResNet-18 encoder, no pretrained weights) takes ``--steps`` SGD steps on random 1-channel images and masks
(seed 0); prints the L2 norm of the change of the BatchNorm running means/variances and of the parameters, and
the factor clipping the whole update to norm 1 leaves on the parameters' part. Results: docs/deployment.md."""
from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> None:
    import segmentation_models_pytorch as smp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    net.train()
    for _ in range(args.steps):
        x = torch.randn(4, 1, args.size, args.size)
        y = (torch.rand(4, args.size, args.size) > 0.8).long()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = {n for n, _ in net.named_parameters()}
    after = net.state_dict()

    def norm(keys):
        return float(torch.sqrt(sum(((after[k] - before[k]).double() ** 2).sum() for k in keys)))

    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    bn, w = norm(stats), norm([k for k in after if k in params])
    total = (bn ** 2 + w ** 2) ** 0.5
    print(f"{args.steps} SGD steps (lr {args.lr}, {args.size} px): running statistics' change L2 {bn:.3f}, "
          f"parameters' {w:.3f}; clipped to norm 1 the parameters' part is scaled by {min(1.0, 1 / total):.4f} "
          f"(without the statistics: {min(1.0, 1 / w):.4f})")


if __name__ == "__main__":
    main()
