"""bench/zoo.py's table: one row per model and exporter, counts, reasons, rows not run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.zoo import key, write_table


def test_the_table_has_every_row_and_says_which_were_not_run(tmp_path: Path) -> None:
    rows = [("torchvision", "resnet18"), ("timm", "vit_tiny_patch16_224")]
    results = {
        key("torchvision", "resnet18", "torchscript"): {
            "status": "pass", "params": 11.7e6, "onnx_err": [1e-7, 2e-7, 3e-7],
            "torch32_err": [1e-7, 1e-7, 2e-7],
        },
        key("timm", "vit_tiny_patch16_224", "dynamo"): {
            "status": "fail", "params": 5.7e6, "step": "augment",
            "reason": "UnsupportedOpsError: no backward rule for Foo | Bar",
        },
    }  # fmt: skip
    summary = write_table(rows, results, path=tmp_path / "models.md")
    assert summary == "1 pass, 1 fail, 2 not run"
    text = (tmp_path / "models.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| t")]
    assert len(table) == 4 and table[0].startswith("| timm | vit_tiny_patch16_224 |")
    assert "| torchvision | resnet18 | 11.7 | torchscript | pass | error 3.0e-07" in text
    assert "augment: UnsupportedOpsError: no backward rule for Foo \\| Bar |" in text
    assert text.count("| not run |") == 2 and "**1 pass, 1 fail, 2 not run**" in text


def test_a_row_judged_by_float64_autograds_own_jumps_says_so(tmp_path: Path) -> None:
    rows = [("torchvision", "regnet_y_1_6gf")]
    results = {
        key("torchvision", "regnet_y_1_6gf", "torchscript"): {
            "status": "pass", "params": 11.2e6, "onnx_err": [8.8e-4, 6e-4, 2.6e-3],
            "torch32_err": [8.8e-7, 8.8e-7, 8.4e-7], "float64_jump": [6.8e-4, 3e-10, 2.6e-3],
            "kinked": 2,
        },
    }  # fmt: skip
    write_table(rows, results, exporters=("torchscript",), path=tmp_path / "models.md")
    text = (tmp_path / "models.md").read_text()
    assert (
        "| pass | error 2.6e-03 (torch float32 8.8e-07); 2 input(s) within float64 autograd's "
        "own jump (2.6e-03) under 1e-07 input noise |"
    ) in text


@pytest.mark.torch
def test_a_wrong_gradient_is_not_excused_as_a_kink(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 % error in every input gradient fails the row: a smooth small net's float64 gradient
    does not jump under float32-sized input noise, so the kink test cannot excuse it."""
    torch = pytest.importorskip("torch")
    from onnx import helper

    import gradtap.export.graph.augment as augment_module
    from bench.zoo import check
    from gradtap.runtime import contract as c

    real = augment_module.augment

    def off_by_one_percent(model, **kwargs):  # noqa: ANN001, ANN003, ANN202
        out = real(model, **kwargs)
        g = out.graph
        producer = next(n for n in g.node if c.GRAD_INPUT in n.output)
        producer.output[list(producer.output).index(c.GRAD_INPUT)] = "grad_exact"
        g.initializer.append(helper.make_tensor("one_percent", 1, [], [1.01]))
        g.node.append(helper.make_node("Mul", ["grad_exact", "one_percent"], [c.GRAD_INPUT]))
        return out

    monkeypatch.setattr(augment_module, "augment", off_by_one_percent)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 14 * 14, 5),
    ).eval()
    row = check(model, 16, "torchscript")
    assert row["status"] == "fail" and row.get("kinked") == 0, row
    # smooth: the gradient moves with the nudge (1e-7 times the curvature), it does not jump
    assert max(row["float64_jump"]) < 1e-6 and min(row["onnx_err"]) > 5e-3
