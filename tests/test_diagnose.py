"""``pyro-vae diagnose``: verdicts on crafted arrays, agreement with the trainer, the command."""

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.apps.cli import main as cli_main
from pyro_vae.apps.diagnose import KINDS, diagnose_data, diagnose_split, format_diagnosis
from pyro_vae.config import DataConfig, ModelConfig, RunConfig
from pyro_vae.data import DataFormatError, load_data
from pyro_vae.models import build_vae
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.registry import UnknownNameError
from pyro_vae.runs import resolve_data
from pyro_vae.train import check_data

ROOT = Path(__file__).resolve().parents[1]
N, D = 300, 16


def _rng():
    return np.random.default_rng(0)


def _grey8():
    x = _rng().integers(0, 256, (N, D)).astype(np.uint8)
    x[0, :] = np.arange(D) * 17  # every data set below spans 0..255
    return x


def _levels17():
    return _rng().integers(0, 17, (N, D)).astype(np.uint8)


def _reals():
    return _rng().standard_normal((N, D)).astype(np.float32)


def test_binary_data_fit_the_bernoulli_and_make_densities_unbounded():
    for x in (
        _rng().integers(0, 2, (N, D)).astype(np.float32),
        (_rng().integers(0, 2, (N, D)) * 255).astype(np.uint8),
    ):
        d = diagnose_data(x)
        assert d.kind == "binary" and d.num_distinct == 2
        # exact 0s and 1s are outside a Beta's support unless dequantized (uint8)
        beta_valid = x.dtype == np.uint8
        assert set(d.valid_likelihoods) == set(LIKELIHOODS) - (set() if beta_valid else {"beta"})
        assert beta_valid or "strictly inside (0, 1)" in d.verdict("beta").reason
        bern = d.verdict("bernoulli")
        assert bern.discrete and bern.caution is None
        assert d.recommended[0].likelihood == "bernoulli"  # two values: the tightest pmf
        for name in ("continuous-bernoulli", "normal"):
            v = d.verdict(name)
            assert v.discrete is False
            assert (v.caution is not None) == (not v.dequantize)
    # float 0/1 cannot be dequantized: every density on them is unbounded
    d = diagnose_data(_rng().integers(0, 2, (N, D)).astype(np.float32))
    assert "only 2 distinct values" in d.verdict("normal").caution
    assert not d.advice_on("bce-grey") and not d.advice_on("levels")


def test_8bit_grey_levels():
    d = diagnose_data(_grey8(), name="grey")
    assert d.kind == "8-bit" and d.num_distinct == 256 and (d.low, d.high) == (0, 255)
    assert d.valid_likelihoods == tuple(sorted(LIKELIHOODS))
    bern, cb = d.verdict("bernoulli"), d.verdict("continuous-bernoulli")
    assert (bern.binarize, bern.dequantize) == ("dynamic", False)
    assert (cb.binarize, cb.dequantize) == ("none", True) and cb.caution is None
    assert d.advice_on("bce-grey") and d.advice_on("mse") and not d.advice_on("levels")
    # the sd per dimension of U{0..255}/255 is about 0.29: the MSE's sigma is 2.4 times it
    assert re.search(
        r"the fixed sigma 0\.707 is 2\.[45]\d* times the data's standard "
        r"deviation per dimension, s = 0\.2[89]",
        d.advice_on("mse")[0].text,
    )
    # grey levels are not Bernoulli outcomes: without binarization the bernoulli refuses them
    raw = diagnose_data(_grey8(), binarize="none")
    assert not raw.verdict("bernoulli").valid
    assert "--binarize dynamic" in raw.verdict("bernoulli").reason
    assert raw.verdict("continuous-bernoulli").valid  # dequantized by default, binarize none


def test_8bit_levels_recommend_the_pmf_over_the_levels_then_the_dequantized_densities():
    d = diagnose_data(_grey8())
    order = [v.likelihood for v in d.recommended]
    # the exact pmf first; then the densities, tightest support first (ties by name)
    assert order == ["discretized-logistic", "beta", "continuous-bernoulli", "laplace", "normal"]
    assert "bernoulli" not in order  # valid, but on binarized draws, not on these levels
    dl = d.verdict("discretized-logistic")
    assert (dl.binarize, dl.dequantize, dl.discrete) == ("none", False, True)
    assert dl.bits_per_dim == "exact" and dl.support_extent == 256
    assert "-log p(x) / (D ln 2) is exact" in dl.reason
    for name in ("beta", "continuous-bernoulli", "laplace", "normal"):
        v = d.verdict(name)
        assert v.dequantize and v.bits_per_dim == "dequantization-bound", name
    assert d.verdict("bernoulli").bits_per_dim is None
    assert [d.verdict(n).support_extent for n in ("beta", "laplace")] == [1.0, math.inf]
    report = " ".join(format_diagnosis(d).split())
    assert "1. discretized-logistic (--binarize none --no-dequantize): 8-bit levels" in report
    assert "5. normal (--binarize none --dequantize)" in report
    assert "-log p(x) / 11.1, exact" in report  # D ln 2 for D = 16
    # dequantized, the levels are off the pmf's support, and it says what to do
    deq = diagnose_data(_grey8(), dequantize=True)
    assert not deq.verdict("discretized-logistic").valid
    assert "--no-dequantize" in deq.verdict("discretized-logistic").reason


def test_proportions_inside_the_unit_interval_recommend_the_beta_first():
    x = _rng().beta(2.0, 5.0, (N, D)).astype(np.float32)
    d = diagnose_data(x)
    assert d.kind == "unit-interval" and d.low > 0 and d.high < 1
    assert [v.likelihood for v in d.recommended][:2] == ["beta", "continuous-bernoulli"]
    assert not d.verdict("discretized-logistic").valid  # floats off the 8-bit levels
    # one exact 0 and the Beta is refused with what to do; continuous-bernoulli comes first
    x[5, 3] = 0.0
    e = diagnose_data(x)
    assert not e.verdict("beta").valid and "squash" in e.verdict("beta").reason
    assert e.recommended[0].likelihood == "continuous-bernoulli"


def test_heavy_tails_are_measured_and_both_densities_on_the_reals_recommended():
    laplace = diagnose_data(_rng().laplace(size=(4000, D)).astype(np.float32))
    normal = diagnose_data(_rng().standard_normal((4000, D)).astype(np.float32))
    # excess kurtosis: 3 for Laplace values, 0 for Normal ones (sample SE about 0.1 here)
    assert laplace.excess_kurtosis == pytest.approx(3.0, abs=0.5)
    assert normal.excess_kurtosis == pytest.approx(0.0, abs=0.2)
    for d in (laplace, normal):
        assert [v.likelihood for v in d.recommended] == ["laplace", "normal"]
    assert "heavy tails" in laplace.verdict("laplace").fits
    assert "tails: excess kurtosis 3" in " ".join(format_diagnosis(laplace).split())
    assert diagnose_data(np.zeros((4, 3), np.float32)).excess_kurtosis is None  # constant


def test_17_levels_stored_as_uint8_are_caught_and_the_suggested_rescaling_fixes_them():
    x = _levels17()
    d = diagnose_data(x)
    assert d.kind == "low-levels" and d.num_distinct == 17 and d.high == 16
    (advice,) = d.advice_on("levels")
    assert "17 grey levels 0..16" in advice.text
    assert "16/255 = 0.063" in advice.text
    assert "np.round(x * (255 / 16)).astype(np.uint8)" in advice.text
    assert d.advice_on("bce-grey") and d.advice_on("mse")
    # floats on the 17 exact levels are offered only with the warning the verdicts give them
    assert (
        "float32 instead would leave 17 exact values, on which a density grows without "
        "bound" in advice.text
    )
    floats01 = diagnose_data(x.astype(np.float32) / 16)
    assert all(
        "17 distinct values" in floats01.verdict(n).caution
        for n in ("continuous-bernoulli", "normal")
    )
    report = " ".join(format_diagnosis(d, "continuous-bernoulli").split())
    assert "[levels]" in report and "need rescaling" in report
    # the rescaling the report suggests spreads the 17 levels over 0..255 (no uint8 overflow)
    fixed = eval("np.round(x * (255 / 16)).astype(np.uint8)", {"np": np, "x": x})
    e = diagnose_data(fixed)
    assert e.kind == "8-bit" and e.num_distinct == 17 and (e.low, e.high) == (0, 255)
    assert not e.advice_on("levels")
    # ... and the densities then see dequantized, continuous values: no caution, bits/dim
    for name in ("continuous-bernoulli", "normal"):
        v = e.verdict(name)
        assert v.dequantize and v.caution is None and "bits/dim" in v.reason
    assert e.verdict("bernoulli").binarize == "dynamic"
    # a 0/1 mask saved as uint8 is the same mistake: 1 is read as 1/255
    mask = diagnose_data(_rng().integers(0, 2, (N, D)).astype(np.uint8))
    assert mask.kind == "low-levels" and "1/255 = 0.004" in mask.advice_on("levels")[0].text
    # the same levels as floats are taken literally, outside [0, 1]; the advice is the same
    floats = diagnose_data(x.astype(np.float32))
    (advice,) = floats.advice_on("levels")
    assert floats.kind == "real" and "np.round(x * (255 / 16)).astype(np.uint8)" in advice.text
    assert "17 exact values grows without bound" in advice.text


def test_uint8_levels_short_of_255_are_low_levels_however_many():
    """The rule is the brightest level, not the count: 100 levels 0..99 are caught."""
    x = _rng().integers(0, 100, (N, D)).astype(np.uint8)
    x[0, :] = np.arange(D)  # the lowest levels
    x[1, :] = 99 - np.arange(D)  # and the highest
    d = diagnose_data(x)
    assert d.kind == "low-levels" and d.num_distinct == 100 and (d.low, d.high) == (0, 99)
    assert "brightest below 128" in KINDS[d.kind]
    (advice,) = d.advice_on("levels")
    assert "100 grey levels 0..99 stored as uint8" in advice.text
    assert "99/255 = 0.388" in advice.text
    fixed = eval("np.round(x * (255 / 99)).astype(np.uint8)", {"np": np, "x": x})
    e = diagnose_data(fixed)
    assert e.kind == "8-bit" and e.num_distinct == 100 and (e.low, e.high) == (0, 255)
    assert not e.advice_on("levels")
    # the boundary: a brightest level of 127 is low-levels, 128 is 8-bit with a milder note
    x = _rng().integers(0, 128, (N, D)).astype(np.uint8)
    x[0, 0] = 127
    assert diagnose_data(x).kind == "low-levels"
    x[0, 0] = 128
    high = diagnose_data(x)
    assert high.kind == "8-bit"
    assert "brightest level is 128 < 255" in high.advice_on("levels")[0].text


def test_unbounded_reals_fit_only_the_normal():
    x = _reals()
    d = diagnose_data(x)
    assert d.kind == "real" and d.num_distinct == len(np.unique(x))
    assert (d.low, d.high) == (x.min(), x.max())
    assert d.valid_likelihoods == ("laplace", "normal")
    assert d.verdict("normal").caution is None and not d.verdict("normal").dequantize
    assert "probabilities" in d.verdict("bernoulli").reason  # binarization reads floats so
    assert "Rescale the data" in d.verdict("continuous-bernoulli").reason
    assert "unbounded" in d.advice_on("bce-grey")[0].text
    assert d.advice_on("units")
    out = " ".join(format_diagnosis(d, "continuous-bernoulli").split())
    assert "NOT valid" in out and "valid here: laplace, normal" in out


def test_constant_pixels_are_counted():
    x = _grey8()
    x[:, 3:6] = 7
    x[:, 10] = 0
    d = diagnose_data(x)
    assert d.constant_dims == 4 and d.constant_fraction == 4 / D
    assert "4 of 16 dimensions (25.0%)" in d.advice_on("constant")[0].text
    # not dequantized, a density on a constant pixel is unbounded
    f = diagnose_data(x.astype(np.float32) / 255)
    assert f.kind == "unit-interval" and f.constant_dims == 4
    assert "grows without bound" in f.advice_on("constant")[0].text
    assert "grid k/255" in f.advice_on("levels")[0].text


def test_loader_refusals_and_unknown_names():
    with pytest.raises(DataFormatError, match=r"0\.\.255; found values in \[0, 300\]"):
        diagnose_data(np.array([[0, 300], [1, 2]], dtype=np.int64))
    with pytest.raises(DataFormatError, match="1 NaN/inf value"):
        diagnose_data(np.array([[0.5, np.nan], [0.1, 0.2]]))
    with pytest.raises(UnknownNameError, match="bernoulli, beta, continuous-bernoulli"):
        diagnose_data(_grey8()).verdict("gaussian")
    assert set(KINDS) == {"binary", "8-bit", "low-levels", "unit-interval", "real"}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_tensors_take_the_loaders_checks_as_arrays_do(as_tensor):
    wrap = torch.from_numpy if as_tensor else (lambda a: a)
    with pytest.raises(DataFormatError, match=r"\(5, 28, 28, 3\) looks channels-last"):
        diagnose_data(wrap(np.zeros((5, 28, 28, 3), np.float32)))
    with pytest.raises(DataFormatError, match=r"empty data, shape \(0, 16\)"):
        diagnose_data(wrap(np.zeros((0, 16), np.float32)))
    with pytest.raises(DataFormatError, match="1 NaN/inf value"):
        diagnose_data(wrap(np.array([[0.5, np.nan], [0.1, 0.2]], np.float32)))
    x = _levels17().reshape(N, 1, 4, 4)
    assert diagnose_data(wrap(x)) == diagnose_data(x)


@pytest.mark.parametrize("source", ["shapes", "float-npy", "reals-npy"])
def test_verdicts_agree_with_what_the_trainer_does(source, tmp_path):
    """Every verdict is the trainer's: the preprocessing of train.resolve_data, and valid
    exactly when train.check_data accepts the data so prepared."""
    dataset = "shapes"
    if source != "shapes":
        dataset = str(tmp_path / "x.npy")
        x = torch.rand(120, 1, 4, 4) if source == "float-npy" else torch.randn(120, 16)
        np.save(dataset, x.numpy())
    d = diagnose_split(load_data(dataset, num_shapes=100, test_size=20))
    for name in LIKELIHOODS:
        verdict = d.verdict(name)
        cfg = RunConfig(
            model=ModelConfig(likelihood=name),
            data=DataConfig(dataset=dataset, num_shapes=100, test_size=20),
        )
        try:
            split, pre, _ = resolve_data(cfg)  # binarizing reals fails here already
            assert (verdict.binarize, verdict.dequantize) == (pre.binarize, pre.dequantize)
            vae = build_vae(split.event_shape, name, latent_dim=2, hidden=(4,))
            check_data(vae, split.train, pre, "training")
            check_data(vae, split.test, pre, "test")
            accepted = True
        except ValueError:
            accepted = False
        assert verdict.valid == accepted, (name, verdict.reason)
    # shapes (8-bit): all six; floats in [0, 1): not the pmf over levels; reals: the two on R
    expected = {"shapes": 6, "float-npy": 5, "reals-npy": 2}[source]
    assert len(d.valid_likelihoods) == expected


def test_cli_diagnose_in_process(capsys):
    small = ["--dataset", "shapes", "--num-shapes", "100", "--test-size", "20"]
    assert cli_main(["diagnose", *small]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the report is wrapped
    assert "kind: 8-bit grey levels" in out and "D = 784 dimensions" in out
    assert "[pixel-mean]" in out and "KL weight of 784" in out
    assert "8 - log p(x) / 543.4" in out  # D ln 2 for D = 784
    # the classic mistake: grey levels to a Bernoulli without binarization
    assert cli_main(["diagnose", *small, "--likelihood", "bernoulli", "--binarize", "none"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "--likelihood bernoulli: NOT valid" in out
    assert "valid here: beta, continuous-bernoulli, discretized-logistic, laplace, normal" in out
    assert cli_main(["diagnose", *small, "--likelihood", "normal"]) == 0
    assert "--likelihood normal: valid for these data" in " ".join(capsys.readouterr().out.split())


def test_cli_rejects_an_unknown_likelihood_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["diagnose", "--likelihood", "gaussian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in LIKELIHOODS)
    assert cli_main(["diagnose", "--dataset", "no-such-dataset"]) == 1
    assert "valid choices: cifar10, fashion-mnist" in capsys.readouterr().err


def test_cli_subprocess_catches_17_levels(tmp_path):
    path = tmp_path / "levels.npy"
    np.save(path, _levels17().reshape(N, 4, 4))
    exe = Path(sys.executable).parent / "pyro-vae"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::DeprecationWarning"}
    res = subprocess.run(
        [str(exe), "diagnose", "--dataset", str(path), "--test-size", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "17 grey levels 0..16 stored as uint8" in out
    assert "np.round(x * (255 / 16)).astype(np.uint8)" in out


def test_readme_answers_run(capsys):
    """Every command in the README's "Why is my VAE loss negative?" section parses; the
    diagnose commands on the embedded shapes also run."""
    from pyro_vae.apps.cli import build_parser
    from pyro_vae.apps.pitfalls import add_pitfalls_flags, config_from_args

    readme = (ROOT / "README.md").read_text()
    section = re.search(
        r"^## Why is my VAE loss negative\?\n(.*?)(?=^## )", readme, re.S | re.M
    ).group(1)
    commands = [
        c
        for block in re.findall(r"```bash\n(.*?)\n\s*```", section, re.S)
        for c in block.replace("\\\n", " ").splitlines()
        if c.strip()
    ]
    assert len(commands) >= 8
    for command in commands:
        argv = shlex.split(command)
        while "=" in argv[0]:  # OMP_NUM_THREADS=1 ...
            argv.pop(0)
        # as in Set up and Test: the venv's executables, no activation assumed
        assert argv[0] in (".venv/bin/pyro-vae", ".venv/bin/python"), command
        if argv[0] == ".venv/bin/pyro-vae":
            assert argv[1] == "diagnose"
            build_parser().parse_args(argv[1:])
            if "--dataset" in argv and argv[argv.index("--dataset") + 1] == "shapes":
                cli_main(argv[1:] + ["--num-shapes", "100", "--test-size", "20"])
                assert "kind: 8-bit grey levels" in capsys.readouterr().out
        else:
            assert argv[1] == "experiments/loss_pitfalls.py", command
            parser = argparse.ArgumentParser(exit_on_error=False)
            add_pitfalls_flags(parser)
            config_from_args(parser.parse_args(argv[2:]))
    capsys.readouterr()
