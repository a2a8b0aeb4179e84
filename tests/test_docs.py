"""The README tables follow the code: ops, methods, models, contract names, commands."""

from __future__ import annotations

import re
from pathlib import Path

from gradtap.cli.main import cli
from gradtap.cli.modelref import KNOWN_MODELS
from gradtap.export.graph.table import RULES
from gradtap.runtime import contract as c
from gradtap.runtime.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text("utf-8")


def section(title: str) -> str:
    """The README text from the heading ``## title`` to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_the_two_commands_come_first() -> None:
    head = README[:600]
    assert "make demo" in head and "make test" in head


def test_every_backward_rule_is_listed() -> None:
    listed = set(re.findall(r"`(\w+)`", section("Supported ops")))
    assert set(RULES) <= listed, sorted(set(RULES) - listed)


def test_every_method_and_command_is_listed() -> None:
    methods = section("Methods")
    for name in METHODS:
        assert f"`{name}`" in methods, name
    for command in cli.commands:
        assert f"gradtap {command}" in README, command


def test_every_model_is_listed() -> None:
    models = section("Supported models")
    for name in KNOWN_MODELS:
        assert f"`{name}`" in models, name


def test_the_contract_table_names_every_input_output_and_key() -> None:
    table = section("The explanation graph (for C, C++ and other runtimes)")
    for name in (
        *c.INPUTS,
        c.LOGITS,
        c.GRAD_INPUT,
        c.PROBABILITIES,
        c.TAP_PREFIX,
        c.GRAD_PREFIX,
    ):
        assert f"`{name}" in table, name
    keys = [v for k, v in vars(c).items() if k.startswith("META_") and k != "META_PREFIX"]
    for key in keys:
        assert f"`{key}`" in table, key
    for rule, value in c.RELU_RULES.items():
        assert f"{value} {'guided backprop' if rule == 'guided' else rule}" in table.replace(
            "plain gradient", "plain"
        )


def test_the_picture_is_committed_and_small() -> None:
    path = ROOT / "docs" / "demo-panel.png"
    assert f"({RAW}/docs/demo-panel.png)" in README
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 300_000


REPO = "https://github.com/gradtap/gradtap"  # pyproject [project.urls] Repository
RAW = "https://raw.githubusercontent.com/gradtap/gradtap/main"


def test_readme_links_are_absolute_and_name_real_files() -> None:
    """A package index renders the README away from the repository: relative links break."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for url in links:
        assert url.startswith("https://"), url
        for base in (f"{REPO}/blob/main/", f"{RAW}/"):
            if url.startswith(base):
                assert (ROOT / url[len(base) :]).is_file(), url


def test_the_repository_url_is_the_one_in_pyproject() -> None:
    from importlib.metadata import metadata

    urls = metadata("gradtap").get_all("Project-URL") or []
    assert f"Repository, {REPO}" in urls
