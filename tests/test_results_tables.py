"""The generated result tables: rows come from the JSON files, the README's table is replaced between its markers."""

import json

import pytest

from pipeline.evaluation import results_tables


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def evaluation(fid, num_samples, sampler="ddpm", nfe=20.0):
    return {"label": f"FID-{num_samples // 1000}k", "fid": fid, "kid_mean": 0.02, "kid_std": 0.001, "precision": 0.6,
            "recall": 0.2, "num_samples": num_samples, "model": "pretrained/m", "sampler": sampler, "nfe": nfe,
            "mixed_precision": "bf16", "mean_colour_correction": False, "memorization": {"ratio_mean": 1.01}}


@pytest.fixture
def repository(tmp_path):
    results = tmp_path / "results"
    write(results / "eval" / "small.json", evaluation(20.0, 2000))
    write(results / "eval" / "large.json", evaluation(30.5, 10000, "dpm++2m"))
    write(results / "eval" / "large_ddim.json", evaluation(31.5, 10000, "ddim"))
    points = [{**evaluation(fid, 2000, sampler, nfe), "steps": int(nfe)} for fid, sampler, nfe in
              ((40.0, "ddpm+mc", 20.0), (35.0, "dpm++2m", 25.0), (10.0, "ddpm", 1000.0))]
    write(results / "nfe" / "summary.json", {"protocol": {"model": "pretrained/m", "seed": 0,
                                                          "reference": {"num_images": 20000}}, "points": points})
    write(results / "literature.json", {"rows": [{"source": "paper", "sampler": "DDIM", "nfe": 20, "fid": 13.73,
                                                  "parameters": "78.7M", "compute": "GPUs", "citation": "T1"}],
                                        "protocol_note": "Protocols differ."})
    (tmp_path / "README.md").write_text(f"# x\n\n{results_tables.GLANCE_BEGIN}\nstale\n{results_tables.GLANCE_END}\n"
                                        "after\n")
    return tmp_path


def test_glance_table_takes_the_most_samples_and_the_best_point_within_25_nfe(repository):
    table = results_tables.glance_table(repository / "results")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert "FID-10k **30.50**" in rows[0] and "[large.json](results/eval/large.json)" in rows[0]
    assert "| ddim |" in rows[1] and "FID-10k **31.50**" in rows[1]  # every evaluation at the most samples
    assert "dpm++2m" in rows[2] and "FID-2k 35.00" in rows[2]  # the 1000-NFE point is outside the budget
    assert "FID 13.73" in rows[3] and table.endswith("Protocols differ.")


def test_main_writes_both_files_and_check_then_passes(repository, capsys):
    assert results_tables.main(["--root", str(repository), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert results_tables.main(["--root", str(repository)]) == 0
    readme = (repository / "README.md").read_text()
    assert "stale" not in readme and readme.endswith(f"{results_tables.GLANCE_END}\nafter\n")
    tables = (repository / "results" / "README.md").read_text()
    assert "| [large.json](eval/large.json) |" in tables and "| ddpm+mc | 20 | 20 | 2,000 | 40.00 |" in tables
    assert results_tables.main(["--root", str(repository), "--check"]) == 0


def test_a_readme_without_markers_is_one_clear_error(repository):
    (repository / "README.md").write_text("# no table here\n")
    with pytest.raises(ValueError, match="results-at-a-glance markers"):
        results_tables.main(["--root", str(repository)])


def test_the_report_gets_the_table_only_where_it_has_the_markers(repository):
    report = repository / "REPORT.md"
    report.write_text("# report without a table\n")
    assert results_tables.main(["--root", str(repository)]) == 0
    assert report.read_text() == "# report without a table\n"
    report.write_text(f"# r\n{results_tables.GLANCE_BEGIN}\n{results_tables.GLANCE_END}\n")
    assert results_tables.main(["--root", str(repository), "--check"]) == 1
    assert results_tables.main(["--root", str(repository)]) == 0
    assert "FID-10k **30.50**" in report.read_text()


def test_another_model_gets_its_own_tables_linked_from_results(repository):
    results = repository / "results"
    other = results / "instance-norm-model"
    write(other / "eval" / "old.json", evaluation(28.8, 10000, "ddpm+mc"))
    write(other / "nfe" / "summary.json", json.loads((results / "nfe" / "summary.json").read_text()))
    tables = results_tables.results_readme(results)
    assert "## Evaluations of the instance-norm model" in tables
    assert "[old.json](instance-norm-model/eval/old.json)" in tables
    assert "[summary.json](instance-norm-model/nfe/summary.json)" in tables
    assert "FID-10k **28.80**" not in results_tables.glance_table(results)  # the glance is the shipped model's only
