"""bench/zoo.py's table: one row per model and exporter, counts, reasons, rows not run."""

from __future__ import annotations

from pathlib import Path

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
