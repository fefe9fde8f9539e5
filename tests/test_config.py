"""TrainConfig: recipes, TOML precedence, validation, round trips."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest

from fcnseg.cli import main
from fcnseg.errors import FcnsegError
from fcnseg.training.config import (
    CHOICES,
    RECIPES,
    TrainConfig,
    load_toml,
    resolve_config,
    to_toml,
)
from fcnseg.training.settings import rule_of


def test_d2l_recipe_has_the_chapters_values():
    c = resolve_config(recipe="d2l")
    assert (c.model, c.backbone, c.upsample_init, c.optimizer) == (
        "fcn32s", "resnet18", "bilinear", "sgd")
    assert (c.lr, c.weight_decay, c.momentum, c.batch_size, c.epochs) == (
        0.001, 1e-3, 0.0, 32, 5)
    assert c.crop == [320, 480] and c.scale == [1.0, 1.0] and c.schedule == "constant"


def test_default_recipe_differs_from_d2l():
    c = resolve_config()
    assert c.recipe == "fcnseg" and c.model == "fcn8s" and c.schedule == "poly"
    assert c.scale[0] < c.scale[1]
    assert (c.loss, c.boundary_weight) == ("ce+lovasz", 4.0)
    d2l = resolve_config(recipe="d2l")
    assert (d2l.loss, d2l.boundary_weight) == ("ce", 0.0)  # the chapter's plain cross entropy
    assert set(RECIPES) >= {"d2l", "fcnseg"}
    assert c.color_jitter > 0 and d2l.color_jitter == 0.0  # the chapter has no photometric aug
    assert (c.freeze_stride, d2l.freeze_stride) == (4, 0)  # the chapter trains every layer
    assert (c.freeze_depthwise, d2l.freeze_depthwise) == (True, False)


def test_train_help_reads_each_recipes_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's lines
    assert f"default: fcnseg {TrainConfig.color_jitter}, d2l 0.0)" in text
    assert f"default: fcnseg {TrainConfig.boundary_weight}, d2l 0.0)" in text
    assert "--lr LR learning rate (> 0; default: fcnseg 0.002, d2l 0.001)" in text


def test_precedence_recipe_file_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('recipe = "d2l"\nlr = 0.05\nepochs = 7\n[data_options]\nsize = 48\n')
    c = resolve_config({"epochs": 3, "lr": None}, f)
    assert c.recipe == "d2l" and c.model == "fcn32s"  # from the recipe named in the file
    assert c.lr == 0.05  # file beats recipe; a None flag does not override
    assert c.epochs == 3  # flag beats file
    assert c.data_options == {"size": 48}


def test_toml_round_trip(tmp_path):
    c = resolve_config({"crop": [64, 96], "backbone_weights": None, "seed": 5})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(c))
    again = resolve_config(config_file=path)
    assert again == c
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("key,value,word", [
    ("model", "fcn4s", "fcn32s, fcn16s, fcn8s"),
    ("schedule", "step", "poly, cosine, constant"),
    ("precision", "int8", "fp16"),
    ("class_weights", "inverse", "median-frequency"),
    ("loss", "dice", "ce, ce\\+lovasz"),
])
def test_unknown_value_lists_valid_ones(key, value, word):
    with pytest.raises(FcnsegError, match=word):
        resolve_config({key: value})


def test_bad_values_and_keys(tmp_path):
    with pytest.raises(FcnsegError, match="unknown setting 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(FcnsegError, match="batch-size"):
        resolve_config({"batch_size": 0})
    with pytest.raises(FcnsegError, match="crop"):
        resolve_config({"crop": [64]})
    with pytest.raises(FcnsegError, match="--boundary-weight -1.0: out of range, must be >= 0"):
        resolve_config({"boundary_weight": -1.0})
    with pytest.raises(FcnsegError, match="unknown recipe"):
        resolve_config(recipe="best")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(FcnsegError, match="bad.toml"):
        load_toml(bad)
    with pytest.raises(FcnsegError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_resume_base_keeps_saved_values():
    saved = resolve_config({"seed": 9, "epochs": 2}).to_dict()
    c = resolve_config({"epochs": 4}, base=saved)
    assert c.seed == 9 and c.epochs == 4


def test_the_recipe_fine_tunes_an_imagenet_lite0_and_d2l_stays_the_chapters():
    c, d2l = resolve_config(), resolve_config(recipe="d2l")
    assert (c.backbone, c.pretrained) == ("efficientnet_lite0", True)
    assert (d2l.backbone, d2l.backbone_lr) == ("resnet18", 1.0)


def test_a_run_saved_before_backbone_lr_resumes_with_one_lr():
    saved = resolve_config({"backbone_lr": 0.1}).to_dict()
    del saved["backbone_lr"]  # a config.toml / checkpoint written before the setting existed
    assert resolve_config(base=saved).backbone_lr == 1.0
    with pytest.raises(FcnsegError, match=r"--backbone-lr 2.0: out of range, must be in \[0, 1\]"):
        resolve_config({"backbone_lr": 2.0})


def _wrong_values(f: dataclasses.Field, hint: Any) -> list[tuple[str, list[str], str]]:
    """``(case, flag arguments or [], TOML line or "")`` that must each be refused: a value
    of the wrong type and one out of the setting's range, derived from its declaration."""
    rule, flag, key = rule_of(f), "--" + f.name.replace("_", "-"), f.name
    kind = typing.get_origin(hint) or hint
    cases = []
    if kind in (int, float, list):  # every flag value is text: only numbers can be mistyped
        cli = [flag, "abc"] + (["abc"] if kind is list else [])
        cases.append(("type", cli if rule.flag else [], f'{key} = "abc"'))
    elif hint is bool:
        cases.append(("type", [f"{flag}=yes"], f'{key} = "yes"'))
    else:  # strings and tables
        cases.append(("type", [], f"{key} = 5"))
    bad: Any = None
    if rule.choices or rule.pattern:
        bad = "" if not rule.choices else max(CHOICES[rule.choices]) + 1 if kind is int \
            else "nope"
    elif rule.low is not None or rule.above is not None:
        bad = rule.low - 1 if rule.low is not None else rule.above
    elif rule.high is not None or rule.below is not None:
        bad = rule.high + 1 if rule.high is not None else rule.below
    if bad is not None:
        values = [bad] * (rule.length or 1)
        toml_value = json.dumps(values if kind is list else bad)
        cli = [flag, *map(str, values)] if rule.flag else []
        if rule.parse == "duration":
            cli = [flag, "-5s"]
        cases.append(("range", cli, f"{key} = {toml_value}"))
    return cases


SETTINGS = [(f.name, case, cli, line) for f in dataclasses.fields(TrainConfig)
            for case, cli, line in _wrong_values(f, typing.get_type_hints(TrainConfig)[f.name])]
# Each case through the flag (where one can type it: every flag value is text, so a string
# setting cannot be mistyped there) and through a TOML file.
CASES = [(name, case, cli, line, via) for name, case, cli, line in SETTINGS
         for via in ("flag", "toml") if via == "toml" or cli]


def test_every_setting_has_a_wrong_type_and_range_case():
    names = {name for name, *_ in SETTINGS}
    assert names == {f.name for f in dataclasses.fields(TrainConfig)}
    ranged = {name for name, case, *_ in SETTINGS if case == "range"}
    assert {"lr", "seed", "color_jitter", "crop", "scale", "device", "backbone"} <= ranged


@pytest.mark.parametrize("name, case, cli, line, via", CASES,
                         ids=[f"{n}-{c}-{v}" for n, c, _, _, v in CASES])
def test_a_wrong_setting_is_one_line_naming_it_and_touches_no_run_folder(
        name, case, cli, line, via, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "bad.toml"
    config.write_text(line + "\n")
    given = cli if via == "flag" else ["--config", str(config)]
    try:  # argparse's own errors (a value that is not a number) exit from parse_args
        code = main(["train", "--dataset", "shapes", "--data-dir", str(tmp_path / "data"),
                     "--out", str(out), *given])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fcnseg: error:"), err
    named = cli[0].split("=")[0] if via == "flag" else name
    assert named in err[0] and (via == "flag" or str(config) in err[0]), err
    assert not out.exists() and not (tmp_path / "data").exists()


def test_a_refused_resume_changes_nothing_in_the_run_folder(shapes_dir, tmp_path, capsys):
    from conftest import SHAPES

    out = tmp_path / "run"
    options = [x for k, v in SHAPES.items() for x in ("--data-option", f"{k}={v}")]
    assert main(["train", "--dataset", "shapes", "--data-dir", str(shapes_dir), *options,
                 "--no-pretrained", "--backbone", "tiny", "--epochs", "1", "--batch-size", "4",
                 "--crop", "32", "32", "--workers", "0", "--val-every", "0",
                 "--out", str(out)]) == 0
    before = (out / "config.toml").read_bytes()
    assert main(["train", "--resume", "--out", str(out), "--batch-size", "100000"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert (out / "config.toml").read_bytes() == before

