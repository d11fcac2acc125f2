"""`python -m experiments.report` also writes a self-contained report.html (tables + figures inline)."""
import base64
import json

from experiments import report
from experiments.report_html import markdown_to_html

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def test_report_writes_self_contained_html(tmp_path):
    for i, (model, dice) in enumerate([("dnet", 0.8), ("dnet", 0.6), ("unet", 0.5)]):
        run = tmp_path / "m" / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- seed={i}\n")
        (run / "metrics.json").write_text(json.dumps({"test/dice": dice}))
        (run / "test_overlays.png").write_bytes(PNG)
    (tmp_path / "m" / "9").mkdir()
    (tmp_path / "m" / "9" / "failed.json").write_text(json.dumps({"error": "DataError: data.root /x <missing>"}))
    assert report.main([str(tmp_path / "m")]) == 0
    page = (tmp_path / "m" / "report.html").read_text()
    assert page.count("<table>") == 1 and "<th>method</th>" in page and "model=dnet" in page
    assert "0.7000" in page  # mean Dice of the two dnet seeds
    assert page.count("data:image/png;base64,") == 3  # one overlay per run, embedded
    assert "&lt;missing&gt;" in page  # failures listed, escaped
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_markdown_tables_and_bold():
    out = markdown_to_html("Common: `x=1`\n\n| a | b |\n|---|---|\n| **1** | 2 |\n")
    assert "<code>x=1</code>" in out and "<th>a</th>" in out and "<td><b>1</b></td>" in out


def test_list_items_are_in_a_list_and_every_figure_a_run_writes_is_named():
    """A review: ``<li>`` items were written without a ``<ul>``, and the figure list named evaluation_matrix.png,
    which nothing writes, but not partition.png or confusion_matrix_test.png."""
    from experiments.report_html import RUN_FIGURES

    out = markdown_to_html("Failed:\n- a\n- b\n\nafter\n- c\n")
    assert out.count("<ul>") == 2 and out.count("</ul>") == 2
    assert out.index("<ul>") < out.index("<li>a</li>") < out.index("</ul>") < out.index("<p>after</p>")
    assert "evaluation_matrix.png" not in RUN_FIGURES
    assert {"partition.png", "confusion_matrix_test.png", "fed_distill.png"} <= set(RUN_FIGURES)


def test_labels_over_several_experiments_name_each_by_what_differs_within_it(tmp_path):
    """A review: over a sweep of two models and a federation of two strategies, every override some runs shared
    (each federation's ``data.sites.*``) entered every label, and the cut at 500 characters made both federation
    rows alike."""
    sites = [f"data.sites.site{i}.root=/very/long/path/to/site{i}/data/folder" for i in range(12)]
    runs = {"a0": ["+exp=lits_dnet", "model=dnet", "trainer.max_epochs=2"], "a1": ["+exp=lits_dnet", "model=unet", "trainer.max_epochs=2"],
            "f0": ["+exp=fed_lits_dnet", *sites, "federation/strategy=fedavg", "trainer.max_epochs=2"],
            "f1": ["+exp=fed_lits_dnet", *sites, "federation/strategy=fedprox", "trainer.max_epochs=2"]}
    paths = []
    for name, ovs in runs.items():
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ovs))
        paths.append(run)
    labels, common = report.run_labels(paths)
    assert common == ["trainer.max_epochs=2"]
    assert [labels[p] for p in paths] == ["+exp=lits_dnet model=dnet", "+exp=lits_dnet model=unet",
                                          "+exp=fed_lits_dnet federation/strategy=fedavg",
                                          "+exp=fed_lits_dnet federation/strategy=fedprox"]
