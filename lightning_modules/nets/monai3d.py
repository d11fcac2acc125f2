"""3D segmentation nets from MONAI, shaped for the framework (``in_channels``/``classes`` keys, one
logits tensor out, auxiliary losses through ``auxiliary_losses()``).

* :class:`SegResNetVAE3D`: MONAI's SegResNetVAE (Myronenko 2018) -- paper 003's VAE branch on the
  encoder endpoint (``003_b4df17e9a6a6137e.txt`` §2.4, §3: 128-d latent, L = L_seg + 0.2 L_KL + 0.3 L_2).
  Paper 003's segmentation backbone is C2FNAS, which has no public implementation; SegResNet is the
  encoder-decoder the VAE branch was designed for (deviation recorded in docs/papers.md).
* :func:`unet3d`: MONAI's BasicUNet, a plain 3D U-Net (Çiçek et al. 2016).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, SegResNetVAE

from lightning_modules.errors import ConfigError


class SegResNetVAE3D(SegResNetVAE):
    """SegResNetVAE returning segmentation logits; its VAE loss, weighted as paper 003 §3
    (``kl_weight`` * L_KL + ``recon_weight`` * L_2), is exposed as ``auxiliary_losses()["vae"]``."""

    def __init__(self, in_channels: int = 1, classes: int = 2, patch_size: Sequence[int] = (96, 96, 96),
                 init_filters: int = 8, latent_dim: int = 128, kl_weight: float = 0.2, recon_weight: float = 0.3,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 spatial_dims: int = 3) -> None:
        step = 2 ** len(tuple(blocks_down))  # the encoder halves the size len(blocks_down) - 1 times, the VAE once more
        if any(int(p) % step or int(p) < step for p in patch_size):
            raise ConfigError(f"model=segresnet_vae needs every data.patch_size side to be a multiple of {step} "
                              f"(its encoder and VAE branch halve it {len(tuple(blocks_down))} times): got {list(patch_size)}")
        super().__init__(input_image_size=tuple(int(p) for p in patch_size), vae_nz=latent_dim,
                         spatial_dims=spatial_dims, init_filters=init_filters, in_channels=in_channels,
                         out_channels=classes, blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up))
        self.kl_weight, self.recon_weight = float(kl_weight), float(recon_weight)
        self._vae_loss: torch.Tensor | None = None

    def _get_vae_loss(self, net_input: torch.Tensor, vae_input: torch.Tensor) -> torch.Tensor:
        """Paper 003 §3's 0.2·L_KL + 0.3·L_2, L_KL as Myronenko 2018 (μ² + σ² − log σ² − 1, no ½). MONAI's code
        halves it; the ½ is dropped so the 3D net and the 2D branch (:mod:`.vae_regulariser`) put the same
        weight on KL. Both average over latent dimensions, not Myronenko's N voxels (docs/papers.md)."""
        x_vae = self.vae_down(vae_input).view(-1, self.vae_fc1.in_features)
        z_mean = self.vae_fc1(x_vae)
        z_sigma = F.softplus(self.vae_fc2(x_vae))
        kl = torch.mean(z_mean**2 + z_sigma**2 - torch.log(1e-8 + z_sigma**2) - 1)
        x_vae = self.act_mod(self.vae_fc3(z_mean + z_sigma * torch.randn_like(z_mean)))
        x_vae = self.vae_fc_up_sample(x_vae.view([-1, self.smallest_filters] + self.fc_insize))
        for up, upl in zip(self.up_samples, self.up_layers):
            x_vae = upl(up(x_vae))
        recon = F.mse_loss(net_input, self.vae_conv_final(x_vae))
        return self.kl_weight * kl + self.recon_weight * recon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the VAE branch needs the training patch size; whole volumes (sliding-window windows are
        # patch-sized anyway) skip it
        if self.training and tuple(x.shape[2:]) == tuple(self.input_image_size):
            seg, self._vae_loss = super().forward(x)
            return seg
        self._vae_loss = None
        self.check_roi_size(x.shape[2:])
        net_input = x
        x, down_x = self.encode(net_input)
        down_x.reverse()
        return self.decode(x, down_x)

    def check_roi_size(self, roi_size: Sequence[int], key: str = "roi_size") -> None:
        """A review: ``roi_size=[20,20,20]`` in predict was a tensor-size traceback in the decoder; the encoder
        halves each side ``len(blocks_down) - 1`` times, so every side must divide by that power of 2."""
        step = 2 ** (len(tuple(self.blocks_down)) - 1)
        if any(int(r) % step for r in roi_size):
            raise ConfigError(f"model=segresnet_vae needs every {key} side to be a multiple of {step} (its encoder "
                              f"halves it {len(tuple(self.blocks_down)) - 1} times): got {[int(r) for r in roi_size]}")

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        return {"vae": self._vae_loss} if self.training and self._vae_loss is not None else {}


class UNet3D(BasicUNet):
    """A 3D U-Net (MONAI BasicUNet; Çiçek et al. 2016) with the framework's argument names. A class, not a
    factory function, so the ``_target_`` allow-list (:mod:`lightning_modules.targets`) can check it."""

    def __init__(self, in_channels: int = 1, classes: int = 2,
                 features: Sequence[int] = (16, 16, 32, 64, 128, 16), spatial_dims: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=classes,
                         features=tuple(features), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # four 2x poolings; instance norm at the bottom needs more than one voxel, else torch fails deep inside
        # with a shape message that names neither the patch size nor the fix
        if math.prod(int(s) // 16 for s in x.shape[2:]) < 2:
            raise ConfigError(f"model=unet3d pools each side 4 times (/16) and needs more than one voxel left: "
                              f"patches of {list(x.shape[2:])} are too small; set data.patch_size (training) or roi_size "
                              f"(experiments.predict) to at least 32 a side")
        return super().forward(x)


unet3d = UNet3D  #: the name run configs of earlier versions use
