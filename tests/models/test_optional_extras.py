"""A model that needs an optional package that is not installed stops with the line that installs it."""

import importlib.abc
import sys

import pytest
from omegaconf import OmegaConf

import lmsleep.models
from lmsleep.utils.config import ConfigError, build


class _NotInstalled(importlib.abc.MetaPathFinder):
    """Makes ``import transformers`` fail as it does where the package is absent."""

    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_model_hf_without_transformers_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] == "transformers" or name.startswith("lmsleep.models.hf"):
            monkeypatch.delitem(sys.modules, name)
    # an earlier test may have imported the package: hydra would find it as lmsleep.models' attribute
    monkeypatch.delattr(lmsleep.models, "hf", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(), *sys.meta_path])
    net = OmegaConf.create({"_target_": "lmsleep.models.hf.from_hf", "path": "/nowhere"})
    with pytest.raises(
        ConfigError,
        match=r"^model=hf \(lmsleep.models.hf\) needs transformers, which is not "
        r"installed: pip install 'lmsleep\[hf\]'$",
    ):
        build(net, "model.net")
