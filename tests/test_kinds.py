"""One definition of "a whole number" and "a number" (``lightning_modules.kinds``) for the config, checkpoint and
server-state checks: a bool is neither, NaN is no number, infinity only where a check asks for it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from engine.scalars import check_scalars
from lightning_modules.errors import ConfigError
from lightning_modules.kinds import is_number, is_whole


@pytest.mark.parametrize("value, whole, number", [(3, True, True), (np.int64(3), True, True), (True, False, False),
                                                  (2.5, False, True), (np.float32(2.5), False, True),
                                                  (math.nan, False, False), (math.inf, False, False),
                                                  ("3", False, False), (None, False, False), ([1], False, False)])
def test_kinds(value, whole, number):
    assert is_whole(value) is whole
    assert is_number(value) is number


def test_infinity_only_when_asked():
    assert is_number(math.inf, allow_inf=True) and is_number(-math.inf, allow_inf=True)
    assert not is_number(math.nan, allow_inf=True)


@pytest.mark.parametrize("key, value", [("module.optimizer.lr", math.inf), ("trainer.gradient_clip_val", math.nan),
                                        ("data.batch_size", True), ("seed", 1.0)])
def test_run_scalars_refuse_what_is_not_their_kind(key, value):
    """``module.optimizer.lr=inf`` passed the scalar check before the kinds were shared (an infinite step)."""
    cfg = OmegaConf.create({})
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_scalars(cfg)


@pytest.mark.parametrize("key", ["module.optimizer", "module.scheduler", "module.loss"])
def test_a_bare_value_where_a_config_is_built_is_one_line(key):
    """A walkthrough: ``module.optimizer=sgd`` was ``TypeError: 'str' object is not callable`` once the data and
    net were built; the line's suggestion replaces the whole config (a merge keeps Adam's ``betas``)."""
    cfg = OmegaConf.create({})
    OmegaConf.update(cfg, key, "sgd", force_add=True)
    with pytest.raises(ConfigError, match=rf"{key}='sgd' is a value, not a config to build: replace the config, "
                                          rf"e.g. '~{key}' '\+{key}=\{{_target_: "):
        check_scalars(cfg)
    OmegaConf.update(cfg, key, None, force_add=True)
    check_scalars(cfg)  # module.scheduler=null: none
