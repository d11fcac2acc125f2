"""Paper 003's VAE regulariser branch: the terms, their gradients, and the fed_pancreas experiment with it."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.checkpoints import net_state
from lightning_modules.nets.dnet import DNet
from lightning_modules.nets.vae_regulariser import VAERegularised


def _net(**kw) -> VAERegularised:
    torch.manual_seed(0)
    return VAERegularised(DNet(in_channels=1, classes=3, width=4), "encoder.stages.4", in_channels=1, **kw)


def test_terms_only_in_training_and_weighted():
    net = _net()
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    eval_out = net(x)
    assert net.auxiliary_losses() == {}
    net.train()
    out = net(x)
    aux = net.auxiliary_losses()
    assert set(aux) == {"vae_kl", "vae_recon"} and net.auxiliary_losses() == {}  # read once
    torch.manual_seed(1)
    plain = net.net(x)  # the net's own training outputs (all deep-supervision heads), unchanged
    assert [o.shape for o in out] == [o.shape for o in plain] and out[0].shape == eval_out.shape
    # recompute the two terms by hand from the endpoint and the branch in eval mode (z = mu)
    net.eval()
    with torch.no_grad():
        feats = {}
        h = net.net.encoder.stages[4].register_forward_hook(lambda m, i, o: feats.setdefault("e", o))
        net.net(x)
        h.remove()
        mu, logvar = net.encode(feats["e"])
        recon = net.reconstruct(mu, (32, 32))
        terms = net.vae_losses(x, feats["e"])
    kl = (mu ** 2 + logvar.exp() - logvar - 1).mean()
    assert torch.allclose(terms["vae_kl"], 0.2 * kl)
    assert torch.allclose(terms["vae_recon"], 0.3 * ((recon - x) ** 2).mean())


def test_kl_is_zero_for_the_prior():
    net = _net()
    for layer in (net.fc_mu, net.fc_logvar):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    net.train()
    net(torch.randn(2, 1, 32, 32))
    assert net.auxiliary_losses()["vae_kl"].abs().item() < 1e-7


def test_reconstruction_gradient_reaches_the_shared_encoder_not_the_decoders():
    net = _net()
    net.train()
    net(torch.randn(2, 1, 32, 32))
    aux = net.auxiliary_losses()
    (aux["vae_kl"] + aux["vae_recon"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.net.encoder.stages[0].parameters())
    assert all(p.grad is None for p in net.net.heads.parameters())


def test_bad_endpoint_is_a_config_error_naming_close_matches():
    from lightning_modules.errors import ConfigError

    with pytest.raises(ConfigError, match=r"module.regulariser.encoder_path: .*encoder.stages.4"):
        VAERegularised(DNet(in_channels=1, classes=2, width=4), "encoder.stage.4")


def test_deployed_net_drops_the_branch():
    net = _net()
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"net": None, "regulariser": {"_target_": "x"}}}
    state, _ = net_state(ckpt, "x.ckpt")
    DNet(in_channels=1, classes=3, width=4).load_state_dict(state)  # strict: exactly the inner net


def test_fed_pancreas_with_vae_through_hydra(tmp_path):
    from experiments.run import dispatch
    from tests.hydra_helpers import compose_run
    from tests.test_fed_loop import _seg

    cfg = compose_run(_seg("fed_pancreas", ["site1", "site2"],
                           ["+module/regulariser=vae", "federation.matrix.standalone=false",
                            "federation.matrix.centralised=false"]), tmp_path)
    assert cfg.module.regulariser.kl_weight == 0.2 and cfg.module.regulariser.recon_weight == 0.3
    metrics = dispatch(cfg)
    assert metrics["fed/rounds"] == 2 and "fed/global/test/dice" in metrics
    final = torch.load(tmp_path / "run" / "global_final.pt", weights_only=True)
    assert any(k.startswith("fc_mu") for k in final)  # the branch is part of the federated model


def test_3d_segresnet_vae_uses_the_same_kl_as_the_2d_branch():
    """Found by an audit: MONAI's SegResNetVAE halves L_KL, the 2D branch follows Myronenko's summand, so one
    config (kl_weight 0.2) put twice the KL weight on the 2D encoder. Both are now (μ² + σ² − log σ² − 1)
    averaged over latent dimensions; with recon_weight 0 the 3D loss is exactly kl_weight · that."""
    pytest.importorskip("monai")
    import torch.nn.functional as F

    from lightning_modules.nets.monai3d import SegResNetVAE3D

    torch.manual_seed(0)
    net = SegResNetVAE3D(patch_size=(16, 16, 16), init_filters=8, latent_dim=8, kl_weight=0.2, recon_weight=0.0)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        feat = net.encode(x)[0]
        h = net.vae_down(feat).view(-1, net.vae_fc1.in_features)
        mu, sigma = net.vae_fc1(h), F.softplus(net.vae_fc2(h))
        expected = 0.2 * (mu**2 + sigma**2 - torch.log(1e-8 + sigma**2) - 1).mean()
        assert net._get_vae_loss(x, feat).item() == pytest.approx(expected.item(), rel=1e-5)
