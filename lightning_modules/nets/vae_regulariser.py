"""VAE regulariser branch on a segmentation net's encoder endpoint (paper 003 §2.4, after Myronenko 2018).

Paper 003 adds to C2FNAS "a VAE branch to the encoder endpoint": two dense layers give the 128-d mean and
standard deviation of the encoded features, the latent is ``μ + σ·ε`` in training (``μ`` at validation/
test), a dense layer recovers the feature shape and up-sampling + residual convolution blocks reconstruct
the input; the total loss adds ``0.2·L_KL + 0.3·L_2`` (§2.5, "constant coefficients 0.2 and 0.3").

Written here because no library ships it as a branch for an arbitrary net. The endpoint is read with a
forward hook (:class:`~lightning_modules.hooks.FeatureTap`, registered for each training forward), so any registry net works without editing it:
``encoder_path`` names the module (``encoder.stages.4`` for D-Net/UNet3+, ``encoder`` with
``encoder_index: -1`` for smp nets). The wrapper returns the net's own outputs unchanged; the branch only
runs in training (with grad), where :meth:`auxiliary_losses` hands its two weighted terms to the module.

Choices where the paper is silent or 3D-specific (2D here):
* the endpoint is reduced by a stride-2 3×3 conv to ``reduce_channels`` and average-pooled to
  ``grid × grid`` before the dense layers, so the branch has a fixed size at any input size (the paper's
  fixed 96³ patches make the flattened size constant; ours need not be);
* ``σ`` is parameterised as ``log σ²`` for numerical stability; ``L_KL`` is
  ``μ² + σ² − log σ² − 1`` averaged over latent dimensions and batch (no ½; MONAI's SegResNetVAE's
  normalisation without its ½, not Myronenko's, which divides the sum by the image's voxel count), ``L_2`` the
  mean squared error per pixel (both scale-free, so the paper's constant weights 0.2 / 0.3 do not depend on
  image size; paper 003 §2.5 gives only the weights);
* the reconstruction target is the (normalised) input image as the net sees it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.errors import ConfigError
from lightning_modules.hooks import FeatureTap, resolve_module

__all__ = ["VAERegularised"]


def _out_channels(module: nn.Module, path: str) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"VAE regulariser: module {path!r} has no Conv2d; set encoder_channels explicitly")
    return int(convs[-1].out_channels)


class _ResBlock(nn.Module):
    """Myronenko's residual block: (GroupNorm → ReLU → 3×3 conv) × 2 plus identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        groups = 8 if ch % 8 == 0 else 1
        self.body = nn.Sequential(nn.GroupNorm(groups, ch), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(groups, ch), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VAERegularised(nn.Module):
    """``net`` plus a VAE branch on ``encoder_path`` (paper 003 §2.4: L = L_seg + 0.2·L_KL + 0.3·L_2).

    Args:
        net: the segmentation network (module or built object).
        encoder_path: module path of the encoder endpoint in ``net``.
        encoder_channels: channels of that endpoint's output (default: the out_channels of its last conv).
        in_channels: channels of the input image (the reconstruction target).
        encoder_index: which element to take when the endpoint returns a list (``-1``: the deepest).
        latent_dim: size of μ and σ (128 in the paper).
        reduce_channels, grid: the fixed-size bottleneck before the dense layers (see module docstring).
        up_stages: number of (×2 up-sampling + residual block) stages in the decoder.
        kl_weight, recon_weight: the paper's 0.2 and 0.3.
    """

    def __init__(self, net: nn.Module, encoder_path: str, encoder_channels: int | None = None, in_channels: int = 1,
                 encoder_index: int | None = None, latent_dim: int = 128, reduce_channels: int = 16,
                 grid: int = 4, up_stages: int = 3, kl_weight: float = 0.2, recon_weight: float = 0.3) -> None:
        super().__init__()
        self.net = net
        try:  # a bad path fails at build time, as one line naming the key and close matches
            endpoint = resolve_module(net, encoder_path)
            encoder_channels = int(encoder_channels or _out_channels(endpoint, encoder_path))
        except ValueError as err:
            raise ConfigError(f"module.regulariser.encoder_path: {err}") from err
        self.encoder_path, self.encoder_index = encoder_path, encoder_index
        self.grid, self.reduce_channels = int(grid), int(reduce_channels)
        self.kl_weight, self.recon_weight = float(kl_weight), float(recon_weight)
        flat = self.reduce_channels * self.grid * self.grid
        self.reduce = nn.Sequential(nn.GroupNorm(1, encoder_channels), nn.ReLU(inplace=True),
                                    nn.Conv2d(encoder_channels, self.reduce_channels, 3, stride=2, padding=1))
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.fc_up = nn.Linear(latent_dim, flat)
        ch = max(8, self.reduce_channels)
        stages: list[nn.Module] = [nn.Conv2d(self.reduce_channels, ch, 1)]
        for _ in range(int(up_stages)):
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _ResBlock(ch)]
        self.decoder = nn.Sequential(*stages)
        self.head = nn.Conv2d(ch, in_channels, 1)
        self._aux: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks (``size_multiple``, ``deep_supervision``...) come from ``net``."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

    def encode(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.adaptive_avg_pool2d(self.reduce(feat), self.grid).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-10.0, 10.0)

    def reconstruct(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.fc_up(z).view(len(z), self.reduce_channels, self.grid, self.grid)
        h = self.decoder(F.relu(h))
        return self.head(F.interpolate(h, size=size, mode="bilinear", align_corners=False))

    def vae_losses(self, x: torch.Tensor, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms ``vae_kl`` = 0.2·L_KL and ``vae_recon`` = 0.3·L_2 for input ``x``."""
        mu, logvar = self.encode(feat)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        recon = self.reconstruct(z, tuple(x.shape[-2:]))
        kl = (mu.pow(2) + logvar.exp() - logvar - 1.0).mean()
        l2 = F.mse_loss(recon.float(), x.float())
        return {"vae_kl": self.kl_weight * kl, "vae_recon": self.recon_weight * l2}

    def forward(self, x: torch.Tensor) -> Any:
        if not (self.training and torch.is_grad_enabled()):
            return self.net(x)
        # a hook per training forward (not one kept on the net): copies and pickles of the wrapper stay valid
        with FeatureTap(self.net, [self.encoder_path], index=self.encoder_index) as tap:
            out = self.net(x)
        self._aux = self.vae_losses(x, tap[self.encoder_path])
        return out

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The terms of the last training forward (each already weighted); cleared once read."""
        aux, self._aux = self._aux, {}
        return aux
