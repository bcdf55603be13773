"""The config dataclasses: shared settings declared once, defaults that differ on purpose, no mutation."""
import dataclasses
import json

import pytest

from bayesnas.config import FitConfig, RetrainConfig, SessionSettings, TaskSettings, from_dict
from bayesnas.errors import ConfigError
from bayesnas.models.genotypes import DARTS_V2, genotype_to_dict


def declared(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def test_shared_settings_have_one_declaration_of_their_bounds():
    shared = declared(SessionSettings)
    assert set(shared) >= set(declared(TaskSettings)) and len(shared) - len(declared(TaskSettings)) >= 14
    for cls in (FitConfig, RetrainConfig):
        mine = declared(cls)
        for name, field in shared.items():
            bounds = {k: v for k, v in field.metadata.items() if k not in ("help", "flag")}
            assert {k: v for k, v in mine[name].metadata.items() if k not in ("help", "flag")} == bounds, name
    # the defaults that differ, on purpose (FitConfig says why beside each)
    fit, retrain = FitConfig(), RetrainConfig()
    assert (fit.threads, retrain.threads) == (1, 0)
    assert (fit.checkpoint_every, retrain.checkpoint_every) == (20, 50)
    assert (fit.iterations, retrain.iterations) == (200, 500)
    assert (fit.first_order, retrain.first_order) == (True, False)
    for cls in (FitConfig, RetrainConfig):  # the seed is bounded alike in both
        with pytest.raises(ConfigError, match="seed=-1: expected an integer >= 0"):
            cls(seed=-1).validate()


def test_resolving_makes_a_new_config_and_leaves_the_given_one(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(genotype_to_dict(DARTS_V2)))
    given = RetrainConfig(arch=str(path))
    resolved = given.resolved()
    assert resolved is not given and given.arch == str(path) and isinstance(resolved.arch, dict)
    assert from_dict(RetrainConfig, {"arch": str(path)}).arch == resolved.arch
    fit = FitConfig()
    assert fit.resolved() == fit and fit.resolved() is not fit
