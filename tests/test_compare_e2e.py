"""End to end through the CLI on the synthetic data set: train, compare, report, browser."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from neuralpath.cli import main
from neuralpath.report import SECTIONS
from neuralpath.study import DEFAULT_METHODS

from contract import LEAKAGE_KEYS

FIND_KEYS = LEAKAGE_KEYS | {
    "method",
    "n",
    "agreement",
    "accuracy",
    "mic",
    "mdc",
    "aciou",
    "kept_fraction_mean",
    "kept_fraction_std",
    "seconds_per_image",
    "forward_equivalents",
}
TRANSFER_KEYS = LEAKAGE_KEYS | {
    "transfer_specificity",
    "n",
    "agreement",
    "accuracy",
    "mic",
    "mdc",
    "aciou",
    "kept_fraction_mean",
    "kept_fraction_std",
    "class_instances",
    "theta",
    "instance_class_jaccard",
    "uncovered",
}
METHODS = [m for m in DEFAULT_METHODS if m != "gencnp"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    assert (
        main(
            [
                "train",
                "--arch",
                "vgg11",
                "--width",
                "0.125",
                "--data",
                "synthetic",
                "--epochs",
                "2",
                "--limit",
                "1024",
                "--out",
                str(root / "target"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "compare",
                "--checkpoint",
                str(root / "target"),
                "--data",
                "synthetic",
                "--limit",
                "16",
                "--j",
                "2",
                "--methods",
                ",".join(METHODS),
                "--sparsity",
                "0.8",
                "--set",
                "dgr.iterations=5",
                "--set",
                "dgr-r.iterations=5",
                "--set",
                "greedy.steps=3",
                "--ablation",
                "zero,mean",
                "--reference-size",
                "256",
                "--out",
                str(root / "results"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return root / "results"


def test_method_settings_reach_the_finders(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    assert results["config"]["settings"] == {
        "dgr": {"iterations": 5},
        "dgr-r": {"iterations": 5},
        "greedy": {"steps": 3},
    }
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.runner import open_target

    _, gated = open_target(str(study.parent / "target"), "cpu")
    dgr = build_finder("dgr", gated, FinderOptions(settings={"iterations": 5}))
    assert results["methods"]["dgr"]["forward_equivalents"] == dgr.forward_equivalents()
    assert results["methods"]["greedy"]["forward_equivalents"] == 3 * 3


def test_compare_rejects_settings_of_other_methods(tmp_path, capsys) -> None:
    for setting, message in (
        ("gamma=0.1", "METHOD.KEY=VALUE"),
        ("dgr.gamma=0.1", "not in the study"),
    ):
        code = main(
            [
                "compare",
                "--checkpoint",
                str(tmp_path / "missing"),
                "--methods",
                "cp-mct",
                "--set",
                setting,
                "--out",
                str(tmp_path / "r"),
            ]
        )
        assert code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_results_json_has_every_field(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    assert set(results["transfer"]) == set(METHODS)
    for name, entry in results["methods"].items():
        assert set(entry) >= FIND_KEYS, name
        assert entry["method"] == name and entry["n"] == 16
        for key in ("agreement", "accuracy"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["mic"] >= 0 and entry["mdc"] >= 0 and 0 <= entry["aciou"] <= 100
        assert 0 < entry["kept_fraction_mean"] <= 1 and entry["kept_fraction_std"] >= 0
        assert entry["seconds_per_image"] > 0
        assert entry["forward_equivalents"] >= 0 or math.isnan(entry["forward_equivalents"])
    for name in ("cp-mct", "cp-intgrad", "random", "greedy", "dgr", "dgr-r"):
        assert abs(results["methods"][name]["kept_fraction_mean"] - 0.2) < 0.03, name
    for name, entry in results["transfer"].items():
        assert set(entry) >= TRANSFER_KEYS, name
        assert 0 < entry["n"] <= 16 and entry["n"] + entry["uncovered"] == 16
        assert sum(entry["class_instances"]) >= 2
    assert results["sparsity"] == 0.8
    assert results["config"]["methods"] == METHODS


def test_every_method_runs_under_every_ablation(study: Path) -> None:
    results = json.loads((study / "results.json").read_text())
    assert results["ablations"] == ["zero", "mean"] == results["config"]["ablations"]
    assert set(results["interventions"]) == {"zero", "mean"}
    assert results["interventions"]["zero"]["methods"] == results["methods"]
    assert results["interventions"]["zero"]["transfer"] == results["transfer"]
    for ablation, part in results["interventions"].items():
        assert set(part["methods"]) == set(part["transfer"]) == set(METHODS)
        for name in METHODS:
            row, transfer = part["methods"][name], part["transfer"][name]
            assert set(row) >= FIND_KEYS and set(transfer) >= TRANSFER_KEYS, (ablation, name)
            assert row["ablation"] == transfer["ablation"] == ablation
            assert row["n"] == 16 and 0.0 <= row["blank_agreement"] <= 1.0
            for key in ("swap_follows_input", "swap_follows_mask"):  # none without swap pairs
                assert 0.0 <= row[key] <= 1.0 if row["swap_n"] else math.isnan(row[key])
            specificity = transfer["transfer_specificity"]
            assert math.isnan(specificity) or 0.0 <= specificity <= 1.0
    for name in ("cp-mct", "random", "greedy"):  # the same samples, the same sparsity
        zero, mean = (results["interventions"][a]["methods"][name] for a in ("zero", "mean"))
        assert abs(mean["kept_fraction_mean"] - 0.2) < 0.03, name
        assert zero["blank_agreement_plain"] == mean["blank_agreement_plain"]
    assert (study / "pathways" / "mean" / "cp-mct.safetensors").is_file()


def test_tables_report_and_pathway_files(study: Path) -> None:
    markdown = (study / "results.md").read_text()
    assert all(f"| {m} |" in markdown for m in METHODS)
    assert "### zero ablation" in markdown and "### mean ablation" in markdown
    assert "## zero vs mean" in markdown and "Leakage columns:" in markdown
    side = markdown.split("## zero vs mean")[1]
    for header in ("agreement zero", "agreement mean", "blank agr. mean", "swap → mask zero"):
        assert header in side, header
    assert "forced to c" in markdown and "swap → mask" in markdown
    page = (study / "report.html").read_text()
    for section_id, title in SECTIONS:
        assert f'<section id="{section_id}">' in page and title in page
    assert "<h3>zero vs mean</h3>" in page and "Leakage columns:" in page
    assert "<h3>mean ablation</h3>" in page and "forced to c ↓" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 4 + len(METHODS) + 3
    for name in METHODS:
        assert (study / "pathways" / f"{name}.safetensors").is_file()


def test_report_loads_in_headless_chromium_without_errors(study: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (make test installs it)"
    from playwright.sync_api import sync_playwright

    messages: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "console",
                lambda m: (
                    messages.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: messages.append(f"requestfailed: {r.url}"))
            page.goto((study / "report.html").as_uri())
            for section_id, _ in SECTIONS:
                assert page.locator(f"section#{section_id}").is_visible()
            broken = page.evaluate(
                "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            assert broken == 0
            page.screenshot(path=str(study / "report.png"), full_page=True)
        finally:
            browser.close()
    assert messages == []


def test_labels_are_escaped_in_report(tmp_path: Path) -> None:
    from neuralpath.report.tables import html_table

    table = html_table({"<script>alert(1)</script>": {"agreement": 1.0}})
    assert "<script>" not in table and "&lt;script&gt;" in table


def test_compare_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compare",
            "--checkpoint",
            str(tmp_path / "missing"),
            "--methods",
            "gencnp",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "gencnp needs a generator" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
