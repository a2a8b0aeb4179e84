"""Option spellings shared by every command, global options after the subcommand, model names."""

from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from gradtap.cli.config import hoist_global_options
from gradtap.cli.main import cli
from gradtap.runtime import catalog

COMMANDS = list(cli.commands)


def _options(command: str) -> dict[str, set[str]]:
    """Parameter name -> its option strings."""
    params = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    return {p.name: set(p.opts) | set(p.secondary_opts) for p in params}


@pytest.mark.parametrize(
    ("command", "param"),
    [("explain", "methods"), ("evaluate", "methods"), ("localize", "method")],
)
def test_method_is_m_method_everywhere(command: str, param: str) -> None:
    assert {"-m", "--method"} <= _options(command)[param]


@pytest.mark.parametrize(
    ("command", "param"),
    [("explain", "targets"), ("attack", "target_class"), ("localize", "target"),
     ("visualize", "classes")],
)  # fmt: skip
def test_target_is_t_target_everywhere(command: str, param: str) -> None:
    assert {"-t", "--target"} <= _options(command)[param]


def test_no_command_reuses_a_global_option_name() -> None:
    glob = {"-q", "--quiet", "-v", "--verbose", "--provider", "--threads"}
    for command in COMMANDS:
        names = set().union(*_options(command).values()) if _options(command) else set()
        assert not names & glob, command


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["explain", "a.jpg", "-q"], ["-q", "explain", "a.jpg"]),
        (["-v", "explain", "a.jpg", "--threads", "2", "-vv"], ["-v", "--threads", "2", "-vv",
                                                               "explain", "a.jpg"]),
        (["explain", "--provider=cpu", "a.jpg", "-t", "3"], ["--provider=cpu", "explain",
                                                             "a.jpg", "-t", "3"]),
        (["explain", "a.jpg", "--", "-q"], ["explain", "a.jpg", "--", "-q"]),
        (["--help"], ["--help"]),
    ],
)  # fmt: skip
def test_hoist_global_options(args: list[str], expected: list[str]) -> None:
    assert hoist_global_options(args, COMMANDS) == expected


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), np.full((40, 50, 3), 128, np.uint8))
    return path


def test_global_options_after_the_subcommand_take_effect(photo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["explain", str(photo), "-M", "smallcnn", "-o", str(out), "--json"]
    done = runner.invoke(cli, [*args, "--provider", "cpu", "--threads", "1", "-q"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["model"]["provider"] == "CPUExecutionProvider"
    bad = runner.invoke(cli, [*args, "--overwrite", "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_smallcnn_resolves_without_export(photo: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "empty"))
    done = CliRunner().invoke(
        cli, ["explain", str(photo), "-M", "smallcnn", "-o", str(tmp_path / "o"), "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["model"]["file"].endswith("smallcnn.gradtap.onnx")


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("efficientnet_lite0", "gradtap export efficientnet_lite0 --weights IMAGENET1K"),
        ("resnet18", "gradtap export resnet18 --weights IMAGENET1K_V1"),
        ("mynet", "gradtap augment"),
    ],
)
def test_missing_model_names_the_command_that_fixes_it(
    name: str,
    fix: str,
    photo: Path,
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "empty"))
    done = CliRunner().invoke(cli, ["explain", str(photo), "-M", name, "-o", str(tmp_path / "o")])
    assert done.exit_code == 2 and fix in done.output and "Traceback" not in done.output
    assert len(done.output.strip().splitlines()[-1]) > 40


def test_random_weights_warn_once_visibly(photo: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    # a copy of smallcnn whose metadata says random weights (what `gradtap export` writes)
    import onnx

    model = onnx.load(str(catalog.packaged_models()["smallcnn"]))
    for p in model.metadata_props:
        if p.key == "gradtap.weights":
            p.value = catalog.RANDOM
    onnx.save(model, str(cache / "smallcnn-random.gradtap.onnx"))
    monkeypatch.setenv(catalog.CACHE_ENV, str(cache))
    path = str(cache / "smallcnn-random.gradtap.onnx")
    for command in (["explain", str(photo), "-o", str(tmp_path / "o")],
                    ["attack", str(photo), "-o", str(tmp_path / "a")],
                    ["visualize", "-t", "disc", "--steps", "1", "-o", str(tmp_path / "v")]):  # fmt: skip
        done = CliRunner().invoke(cli, [*command, "-M", path])
        assert done.exit_code == 0, done.output
        assert done.stderr.count("RANDOM weights") == 1, done.stderr
    quiet = CliRunner().invoke(
        cli, ["-q", "explain", str(photo), "-M", path, "-o", str(tmp_path / "q")]
    )
    assert "RANDOM" not in quiet.stderr
    # the trained packaged graph wins over a random export of the same name
    assert catalog.resolve_name("smallcnn") == catalog.packaged_models()["smallcnn"]
    shutil.rmtree(cache)


def test_explainer_warns_on_random_weights(tmp_path: Path) -> None:
    import onnx

    from gradtap.runtime import Explainer
    from gradtap.runtime.explainer import RandomWeightsWarning

    model = onnx.load(str(catalog.packaged_models()["smallcnn"]))
    for p in model.metadata_props:
        if p.key == "gradtap.weights":
            p.value = catalog.RANDOM
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        Explainer(model)


def test_explainer_and_cli_resolve_names_alike(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import shutil

    from gradtap.cli.modelref import resolve_model
    from gradtap.runtime import Explainer

    cache = tmp_path / "cache"
    cache.mkdir()
    shipped = catalog.packaged_models()["smallcnn"]
    monkeypatch.setenv(catalog.CACHE_ENV, str(cache))
    assert resolve_model("smallcnn") == shipped == Path(Explainer("smallcnn").session._source)
    trained = cache / "smallcnn-mine_abcd1234.gradtap.onnx"  # a trained export wins
    shutil.copy(shipped, trained)
    assert resolve_model("smallcnn") == trained == Path(Explainer("smallcnn").session._source)
    with pytest.raises(click.UsageError, match="gradtap export vgg16 --weights IMAGENET1K_V1"):
        resolve_model("vgg16")
    from gradtap.runtime.errors import ModelError

    with pytest.raises(ModelError, match="gradtap export vgg16 --weights IMAGENET1K_V1"):
        Explainer("vgg16")


def test_info_takes_a_model_name_too() -> None:
    done = CliRunner().invoke(cli, ["info", "smallcnn", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["name"] == "smallcnn"
