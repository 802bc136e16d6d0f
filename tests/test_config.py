"""Each setting declared once: the flags, flat settings and nested dictionaries that come from
the configuration dataclasses, and the one rule for the preprocessing defaults."""

import argparse
import dataclasses
import inspect

import pytest
import torch

from pyro_vae.apps.cli import build_parser
from pyro_vae.apps.compare import PER_RUN, CompareConfig, add_compare_flags, config_from_args
from pyro_vae.apps.pitfalls import PitfallsConfig, add_pitfalls_flags
from pyro_vae.apps.pitfalls import config_from_args as pitfalls_from_args
from pyro_vae.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    flat_dict,
    from_dict,
    from_flat,
    setting_names,
)
from pyro_vae.data import load_data
from pyro_vae.models import LIKELIHOODS, Likelihood, build_vae


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_run_setting_is_one_train_flag_with_its_default_stated_once():
    flags = _flags(_subparser("train"))
    assert set(setting_names(RunConfig)) <= set(flags)
    assert set(flags) - set(setting_names(RunConfig)) == {"out", "resume", "config"}
    for name in setting_names(RunConfig):
        help_text = flags[name].help
        assert help_text.count("(default: ") == 1, (name, help_text)
        assert "%(default)" not in help_text and "None)" not in help_text, name
    text = _subparser("train").format_help()
    assert "(default: None)" not in text and "==SUPPRESS==" not in text
    # the values shown are the dataclass defaults
    assert "(default: 20)" in flags["latent_dim"].help and "(default: 0.001)" in flags["lr"].help
    assert "(default: 400)" in flags["hidden"].help
    assert "(default: shared)" in flags["scale"].help  # None means the likelihood decides


def test_choices_are_read_from_the_registries_when_the_parser_is_built():
    @LIKELIHOODS.register("test-only")
    class _TestOnly(Likelihood):
        pass

    try:
        assert "test-only" in _flags(_subparser("train"))["likelihood"].choices
    finally:
        LIKELIHOODS._entries.pop("test-only")
    assert "test-only" not in _flags(_subparser("train"))["likelihood"].choices


def test_flags_parse_to_the_settings_given_only():
    args = _subparser("train").parse_args(
        ["--latent-dim", "3", "--hidden", "8", "16", "--no-quiet", "--binarize", "static"]
    )
    cfg = from_flat(
        RunConfig(), {k: v for k, v in vars(args).items() if k in setting_names(RunConfig)}
    )
    assert cfg.model.latent_dim == 3 and cfg.model.hidden == (8, 16)
    assert cfg.data.binarize == "static" and cfg.train.quiet is False
    assert cfg.train == TrainConfig(quiet=False)  # nothing else moved from the defaults


def test_flat_settings_reach_every_section_and_refuse_unknown_keys():
    cfg = from_flat(RunConfig(), {"latent-dim": 4, "test_size": 7, "epochs": 2})
    assert (cfg.model.latent_dim, cfg.data.test_size, cfg.train.epochs) == (4, 7, 2)
    with pytest.raises(ValueError, match="unknown setting 'latent'; valid settings: .*latent-dim"):
        from_flat(RunConfig(), {"latent": 4})
    with pytest.raises(ValueError, match="latent-dim must be >= 1"):
        from_flat(RunConfig(), {"latent_dim": 0})
    # config.json round trip: lists for tuples, data facts beside the sections ignored
    saved = {**cfg.to_dict(), "event_shape": [1, 28, 28], "num_train": 5}
    saved["model"]["hidden"] = list(saved["model"]["hidden"])
    assert from_dict(RunConfig, saved) == cfg == RunConfig.from_dict(cfg.to_dict())
    assert flat_dict(cfg)["latent_dim"] == 4 and len(flat_dict(cfg)) == len(
        setting_names(RunConfig)
    )


def test_the_library_defaults_are_the_configurations():
    """build_vae and load_data, below the configuration, state the same defaults."""
    vae_defaults = inspect.signature(build_vae).parameters
    for name in ("likelihood", "latent_dim", "hidden", "arch", "activation"):
        assert vae_defaults[name].default == getattr(ModelConfig(), name), name
    data_defaults = inspect.signature(load_data).parameters
    for name in ("data_dir", "test_size", "num_shapes", "download"):
        assert data_defaults[name].default == getattr(DataConfig(), name), name


def test_preprocessing_defaults_come_from_the_likelihood_and_the_data():
    assert DataConfig().resolved("bernoulli", is_8bit=True) == DataConfig(
        binarize="dynamic", dequantize=False
    )
    cb = DataConfig().resolved("continuous-bernoulli", is_8bit=True)
    assert (cb.binarize, cb.dequantize) == ("none", True)
    floats = DataConfig().resolved("normal", is_8bit=False)
    assert (floats.binarize, floats.dequantize) == ("none", False)  # already continuous
    given = DataConfig(binarize="threshold").resolved("normal", is_8bit=True)
    assert (given.binarize, given.dequantize) == ("threshold", False)  # binarized: discrete
    assert DataConfig(dequantize=False).resolved("normal", is_8bit=True).dequantize is False

    @LIKELIHOODS.register("test-binary")
    class _Binary(Likelihood):  # a custom likelihood states its own default
        default_binarize = "threshold"
        dequantize_8bit = False

    try:
        own = DataConfig().resolved("test-binary", is_8bit=True)
        assert (own.binarize, own.dequantize) == ("threshold", False)
    finally:
        LIKELIHOODS._entries.pop("test-binary")


def test_compare_and_pitfalls_embed_the_run_settings():
    parser = argparse.ArgumentParser()
    add_compare_flags(parser)
    flags = _flags(parser)
    assert not set(PER_RUN) & set(flags)  # set per run, or refused by iwae and dreg
    assert {"arch", "capture", "likelihood", "seeds", "ks"} <= set(flags)
    assert "(default: 10)" in flags["epochs"].help  # the comparison's own default
    cfg = config_from_args(parser.parse_args(["--epochs", "2", "--arch", "conv", "--ks", "3"]))
    assert cfg.run.train.epochs == 2 and cfg.run.model.arch == "conv" and cfg.ks == (3,)
    run = cfg.run_config("dreg", 3, seed=5)
    assert (run.train.estimator, run.train.particles, run.train.seed) == ("dreg", 3, 5)
    assert run.model == cfg.run.model and run.data == cfg.run.data
    with pytest.raises(ValueError, match="at least 3 distinct seeds"):
        CompareConfig(seeds=(0, 1))

    parser = argparse.ArgumentParser()
    add_pitfalls_flags(parser, default_dataset="elsewhere")
    assert "likelihood" not in _flags(parser) and "estimator" not in _flags(parser)
    cfg = pitfalls_from_args(parser.parse_args(["--latent-dim", "3"]))
    assert cfg.run.data.dataset == "elsewhere" and cfg.run.model.latent_dim == 3
    assert parser.format_help().count("elsewhere") == 1  # its default, stated once
    assert cfg.run.train == dataclasses.replace(PitfallsConfig().run.train)
    assert cfg.run.train.epochs == 10 and cfg.iw_samples == 1000


def test_evaluate_flags_are_the_evaluation_settings(tmp_path):
    args = _subparser("evaluate").parse_args(["run", "--iw-samples", "7", "--device", "cpu"])
    assert args.iw_samples == 7 and not hasattr(args, "seed")  # only what was given
    with pytest.raises(SystemExit):
        _subparser("evaluate").parse_args(["run", "--which", "last"])
    assert torch.device("cpu").type == args.device
