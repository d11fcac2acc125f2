"""Shared LightningModule plumbing: the net from config, optimiser/scheduler partials, extra loss terms.

Every task module (segmentation, classification, distillation) derives from :class:`BaseModule`, so a
federated client, a distillation student and a centralised run train through the same code path.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_modules.errors import ConfigError
from lightning_modules.hints import argument_hint
from lightning_modules.targets import check_targets

LossTerm = Callable[["BaseModule"], torch.Tensor]
log = logging.getLogger(__name__)


def build(obj: Any, *args: Any, what: str = "object") -> Any:
    """Instantiate ``obj`` when it is a ``_target_`` config (Hydra or plain dict), else return it as is.

    Module configs use ``_recursive_: false`` so that nets, losses and optimisers reach the module as
    configs: the module keeps them in ``hparams`` and a checkpoint alone can rebuild the whole run.
    Every ``_target_`` in ``obj`` (nested ones too) must pass :func:`lightning_modules.targets.check_targets`:
    a config read from a checkpoint is data, never a way to call an arbitrary function.
    """
    if isinstance(obj, (Mapping, DictConfig)):
        if "_target_" not in obj:
            raise TypeError(f"{what} config has no _target_: {dict(obj)}")
        if isinstance(obj, DictConfig):  # our own composed config: resolved here, so what is checked is built
            obj = OmegaConf.to_container(obj, resolve=True)
        check_targets(obj, what)
        _warn_ignored_keys(obj, what)
        return instantiate_with_args_checked(obj, what, *args)
    return obj


def build_net(net: nn.Module | Mapping, regulariser: Callable[[nn.Module], nn.Module] | Mapping | None = None
              ) -> nn.Module:
    """The net a module trains: ``net`` built, wrapped by ``regulariser`` when given (e.g. paper 003's VAE branch,
    a partial that wraps the net). One place, so that ``init_weights``' early check builds what the module does."""
    built = build(net, what="net")
    return built if regulariser is None else build(regulariser, what="regulariser")(built)


#: our nets' size keys, which an experiment sets for its D-Net and a ``model=unet`` swapped in ignores (warned)
_OUR_NET_KEYS = frozenset({"width", "preset", "deep_supervision", "filters", "cat_channels"})
#: old argument names smp still takes through ``**kwargs`` (it pops and maps them)
_SMP_DEPRECATED = frozenset({"decoder_use_batchnorm", "psp_use_batchnorm", "upscale_mode"})


def _warn_ignored_keys(obj: Mapping, what: str) -> None:
    """segmentation-models-pytorch nets take ``**kwargs`` and ignore what they do not know: an experiment's
    ``model.width`` (a D-Net / UNet3+ argument) given to ``model=unet`` built a 24M-parameter U-Net without a
    word, so a ``model=dnet,unet`` sweep compared nets 14x apart in size. Say so, once per process (a federation
    said it for every client in every round)."""
    target = str(obj.get("_target_", ""))
    if not target.startswith("segmentation_models_pytorch.") or str(obj.get("encoder_name", "")).startswith(("tu-", "timm-")):
        return  # a timm encoder takes the extra keys (drop_path_rate, ...)
    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception:  # noqa: BLE001 - an unknown class is reported by the instantiation itself
        return
    ignored = sorted(k for k in obj if not k.startswith("_") and k not in params and k not in _SMP_DEPRECATED)
    unknown = [k for k in ignored if k not in _OUR_NET_KEYS]
    if unknown:  # a walkthrough: +model.encoder_nam=resnet18 trained the default encoder, exit 0, one warning
        near = {k: difflib.get_close_matches(k, list(params), n=1) for k in unknown}
        hint = "".join(f" (did you mean {what}.{m[0]}?)" for m in near.values() if m)
        raise ConfigError(f"{what} {target} takes no {', '.join(unknown)}{hint}")
    said = (what, target, ", ".join(f"{k}={obj[k]!r}" for k in ignored))
    if ignored and said not in _SAID:  # once per process: a federation builds the net for every client and round
        _SAID.add(said)
        log.warning("%s: %s does not take %s; ignored", *said)


_SAID: set[tuple[str, str, str]] = set()


def forget_said_warnings() -> None:
    """A new run warns afresh: :func:`experiments.run.dispatch` calls this first (a review: in an in-process
    multirun or Optuna sweep only the first job's log said which keys its net ignored)."""
    _SAID.clear()


#: library nets whose constructors refuse bad values with KeyError / ValueError (encoder names, channel counts)
_LIBRARY_NETS = ("segmentation_models_pytorch.", "monai.networks.")
#: a constructor called with arguments it does not take (a mistyped key, a checkpoint's config from elsewhere)
_ARGUMENT_ERROR = re.compile(r"unexpected keyword argument|missing \d+ required|got multiple values|takes \d+ positional")


def is_argument_error(err: BaseException) -> bool:
    """A constructor called with arguments it does not take (not a TypeError from inside its body)."""
    return isinstance(err, TypeError) and bool(_ARGUMENT_ERROR.search(str(err)))


def instantiate_with_args_checked(obj: Mapping, what: str, *args: Any) -> Any:
    """``instantiate(obj)``; a constructor given arguments it does not take is one :class:`ConfigError`
    naming ``what``, the class and the argument (Hydra wraps it in a multi-line InstantiationException)."""
    try:
        return instantiate(obj, *args, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if cause is not None and is_argument_error(cause):
            hint = argument_hint(obj.get("_target_"), cause, f"{what}.")
            raise ConfigError(f"{what} {obj.get('_target_')}: {cause}{hint}") from err
        if isinstance(cause, (KeyError, ValueError)) and str(obj.get("_target_", "")).startswith(_LIBRARY_NETS):
            # a value the library refuses (a walkthrough: encoder_name=resnet81, Hydra's multi-line error, exit 1)
            text = " ".join(str(cause.args[0] if isinstance(cause, KeyError) and cause.args else cause).split())
            raise ConfigError(f"{what} {obj.get('_target_')}: {text[:300]}{'...' if len(text) > 300 else ''}") from err
        raise


def _check_optimizer(optimizer: Any) -> None:
    """Build the optimiser once on a dummy parameter: a negative lr or weight decay, or betas outside
    [0, 1), is a :class:`ConfigError` naming the value now, not a traceback when training starts."""
    if not isinstance(optimizer, (Mapping, DictConfig)):
        return
    try:
        build(optimizer, what="module.optimizer")([nn.Parameter(torch.zeros(1))])
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"module.optimizer ({optimizer.get('_target_')}): {err}") from err


def _check_scheduler(scheduler: Any) -> None:
    """Build the scheduler once on a dummy optimiser and step it: a misspelt argument or a value it cannot take
    (``T_max=0``) is a :class:`ConfigError` naming it now (a review: a traceback at the first epoch, which also
    stopped a sweep), not when ``configure_optimizers`` runs."""
    if not isinstance(scheduler, (Mapping, DictConfig)):
        return
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = build(scheduler, what="module.scheduler")(opt)
            opt.step()
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(0.0)
            else:
                sched.step()
    except ConfigError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as err:
        if isinstance(err, TypeError) and not is_argument_error(err):
            raise
        raise ConfigError(f"module.scheduler ({scheduler.get('_target_')}): {type(err).__name__}: {err}") from None


def to_plain(cfg: Any) -> Any:
    """Plain-python copy of a (possibly Omega) config, safe for hparams and checkpoints."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class BaseModule(pl.LightningModule):
    """Builds ``net`` from its config (kept in ``hparams`` so checkpoints are self-describing).

    ``optimizer`` is a partial (Hydra ``_partial_: true``) taking the parameters, or its config;
    ``scheduler`` likewise takes the optimiser and is stepped per epoch unless ``scheduler_interval='step'``.
    Subclasses call ``self.save_hyperparameters(...)`` with configs, never with built objects.
    """

    def __init__(
        self,
        net: nn.Module | Mapping,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        monitor: str | None = None,
        regulariser: Callable[[nn.Module], nn.Module] | Mapping | None = None,
    ) -> None:
        super().__init__()
        self.net = build_net(net, regulariser)
        self.optimizer_factory = optimizer
        _check_optimizer(optimizer)
        _check_scheduler(scheduler)
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitor = monitor
        self._loss_terms: dict[str, LossTerm] = {}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A ``mask`` sent narrow (a whole volume's labels as uint8, :func:`datamodules.patches3d.compact_labels`)
        as int64 on the device, as the losses and metrics take class indices."""
        mask = batch.get("mask") if isinstance(batch, dict) else None
        if isinstance(mask, torch.Tensor) and not mask.is_floating_point() and mask.dtype != torch.long:
            batch["mask"] = mask.long()
        return batch

    # ------------------------------------------------------------------ extra loss terms
    def add_loss_term(self, name: str, fn: LossTerm) -> None:
        """Register ``fn(module) -> scalar`` to be added to the training loss (e.g. FedProx's proximal term)."""
        self._loss_terms[name] = fn

    def extra_loss(self, batch_size: int | None = None) -> torch.Tensor | None:
        """Sum of registered extra terms and of the net's ``auxiliary_losses()`` (a regulariser branch),
        each logged as ``train/<name>`` (epoch means weighted by ``batch_size``, which Lightning cannot infer
        from a batch of several tensors); ``None`` when there are none."""
        total = None
        aux = getattr(self.net, "auxiliary_losses", None)
        terms = [(name, lambda _m, v=v: v) for name, v in (aux() if callable(aux) else {}).items()]
        for name, fn in [*self._loss_terms.items(), *terms]:
            value = fn(self)
            self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
            total = value if total is None else total + value
        return total

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """``train/loss_step`` (this rank's, unsynced: a progress read-out) and ``train/loss_epoch`` (the batch-size
        weighted mean over every rank's shard), the keys one ``on_step=on_epoch=True`` log writes. One call with
        ``sync_dist=True`` all-reduced every step's value too, a collective per step that Lightning warns costs."""
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        # and ``train/loss`` for callbacks and schedulers that monitor it (the one log put it in callback_metrics;
        # a review: EarlyStopping(monitor=train/loss) failed), not sent to the loggers
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
                 logger=False)

    def trainable_parameters(self):
        """Parameters the optimiser updates; distillation overrides this (student + adapters only)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        factory = build(self.optimizer_factory, what="optimizer") or (
            lambda params: torch.optim.Adam(params, lr=1e-3)
        )
        optimizer = factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        sched = build(self.scheduler_factory, what="scheduler")(optimizer)
        scheduler = {"scheduler": sched, "interval": self.scheduler_interval}
        if self.monitor:
            scheduler["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def forward(self, x: torch.Tensor):
        return self.net(x)
