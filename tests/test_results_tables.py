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
    assert "FID 13.73" in rows[3]
    # the UNet precision of this project's rows comes from their files; the literature's note closes the table
    assert all("| bf16 autocast |" in row for row in rows[:3]) and "| FID 13.73 | — |" in rows[3]
    assert table.endswith("Protocols differ.")


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


def test_sweep_table_ranks_the_points_with_the_most_samples_and_names_the_others(repository):
    results = repository / "results"
    summary = json.loads((results / "nfe" / "summary.json").read_text())
    summary["points"].append({**evaluation(64.0, 128, "ode-rk45,rtol=0.001", 69.0), "label": "FID-128", "steps": 1})
    write(results / "nfe" / "summary.json", summary)
    lines = results_tables.sweep_table(results).splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `ddpm`", "| `dpm++2m`", "| `ddpm+mc`"]  # lowest FID first
    assert rows[0].startswith("| `ddpm` | stochastic | 1000 | 1,000 | 10.00 | 1.00× | 20.00 ± 1.00 |")
    assert "| `dpm++2m` | deterministic | 25 | 25 | 35.00 | 3.50× |" in rows[1]
    assert "| FID-2k | × lowest |" in lines[0] and "2,000 samples per point" in lines[-1]
    assert lines[-1].endswith("At other sample counts: `ode-rk45,rtol=0.001` (69 NFE) FID-128 64.00, KID 20.00 "
                              "± 1.00.")


def test_the_report_gets_the_sweep_table_between_its_markers(repository):
    begin, end = results_tables.markers("sampler-sweep")
    report = repository / "REPORT.md"
    report.write_text(f"# r\n{begin}\nold\n{end}\nrest\n")
    assert results_tables.main(["--root", str(repository)]) == 0
    text = report.read_text()
    assert "old" not in text and "| `ddpm` | stochastic |" in text and text.endswith(f"{end}\nrest\n")
    assert results_tables.main(["--root", str(repository), "--check"]) == 0


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


def test_heldout_edit_and_attribute_tables_come_from_their_files(repository):
    results = repository / "results"
    scores = {"fid": 31.25, "kid_mean": 0.004, "kid_std": 0.001}
    write(results / "heldout" / "celeba-64.json", {
        "model": "pretrained/m", "sampler": "ddpm", "nfe": 20, "num_samples": 1440, "model_scores": scores,
        "train_floor": {**scores, "fid": 26.0}, "fid_above_floor": 5.25,
        "memorization": {"ratio_quantiles": {"0.5": 1.002}, "fraction_ratio_below_0.5": 0.0}})
    write(results / "edit" / "fid_center_repaint.json", {
        "task": "center", "method": "repaint", "jump_length": 5, "jump_n_sample": 3, "steps": 50, "nfe_per_batch": 150,
        "num_images": 1000, "scores": scores, "floor": {"fid": 20.0}, "fid_above_floor": 11.25, "psnr": 18.5,
        "psnr_where": "filled region"})
    write(results / "edit" / "inversion_psnr.json", {"num_images": 16, "faces": "valid split, then test",
                                                     "mixed_precision": "no",
                                                     "points": [{"steps": 20, "nfe": 40, "psnr_mean": 27.5,
                                                                 "psnr_stderr": 0.25}]})
    write(results / "attributes" / "classifier.json", {
        "num_train": 20000, "num_heldout": 1440, "heldout_splits": ["valid", "test"], "mean_accuracy": 0.9,
        "mean_majority_accuracy": 0.8,
        "attributes": {"Smiling": {"accuracy": 0.91, "majority_accuracy": 0.5, "heldout_positive_rate": 0.48}}})
    write(results / "attributes" / "control.json", {
        "model": "pretrained/a", "sampler": "edm-dpm++2m", "steps": 20, "attributes": ["Smiling"],
        "samples_per_attribute": 250, "fid_label": "FID-250", "fid_reference": "20000 train images",
        "guidance": {"0.0": {"positive_rate": {"Smiling": 0.45}, "found": {"Smiling": {"Smiling": 0.45}}, "fid": 50.0},
                     "3.0": {"positive_rate": {"Smiling": 0.9}, "found": {"Smiling": {"Smiling": 0.9}}, "fid": 55.0}}})
    write(results / "attributes" / "label_gain.json", {
        "model": "pretrained/a", "num_images": 512, "splits": ["valid", "test"],
        "labels": [{"t": 999, "gain_training": 0.015, "gain_training_stderr": 0.0032, "gain_all": 0.03,
                    "gain_all_stderr": 0.004}],
        "linear_ceiling": {"gain_training": 0.062, "gain_training_stderr": 0.0067, "gain_all": 0.136,
                           "gain_all_stderr": 0.01}})
    tables = results_tables.results_readme(results)
    assert "| 999 | 1.5 ± 0.3 | 3.0 ± 0.4 |" in tables  # the label gain, in % ± its standard error
    assert "| linear guess of the face from its labels | 6.2 ± 0.7 | 13.6 ± 1.0 |" in tables
    assert "`pretrained/a` on 512 held-out faces (the first of the valid and test splits)" in tables
    assert "| [celeba-64.json](heldout/celeba-64.json) | pretrained/m | ddpm | 20 | 1,440 | 31.25 | 26.00 | 5.25 |" \
        in tables
    assert "| center | repaint (jump_length 5, jump_n_sample 3) | 50 | 150 | 1,000 | 31.25 | 20.00 | 11.25 |" in tables
    assert "18.50 dB (filled region) |" in tables and "| 20 | 40 | 27.50 ± 0.25 dB |" in tables
    assert "mean accuracy **90.0 %** against 80.0 %" in tables and "| Smiling | 91.0 | 50.0 | 48.0 |" in tables
    assert "| attribute | guidance 0 | guidance 3 |" in tables and "| Smiling | 45.0 | 90.0 |" in tables
    assert "| FID-250 (all attributes) | 50.00 | 55.00 |" in tables
    assert "| asked for Smiling | +45.0 |" in tables  # the rate's change from guidance 0 to 3
    assert "| 5.25 (FID-1,440 31.25; 1,440 real train images 26.00) | yes |" in tables  # the targets table
    glance = results_tables.glance_table(results)
    assert "against held-out faces | ddpm | 20 | FID-1,440 31.25 (real-train floor 26.00) |" in glance


def test_the_report_gets_the_edit_and_attribute_blocks_linked_from_the_root(repository):
    results = repository / "results"
    report = repository / "REPORT.md"
    blocks = [results_tables.markers(block) for block in ("edits", "inversion", "attribute-control", "label-gain")]
    report.write_text("".join(f"{begin}\nold\n{end}\n" for begin, end in blocks))
    assert results_tables.main(["--root", str(repository)]) == 0
    assert "No edit has been measured" in report.read_text()  # missing files say so instead of a stale table
    assert "No label gain has been measured" in report.read_text()
    assert "No inversion has been measured" in report.read_text()
    write(results / "edit" / "fid_eyes_pc.json", {
        "task": "eyes", "method": "pc", "steps": 50, "nfe_per_batch": 100, "num_images": 1000,
        "scores": {"fid": 30.0, "kid_mean": 0.004, "kid_std": 0.001}, "floor": {"fid": 20.0}, "fid_above_floor": 10.0,
        "psnr": 21.0, "psnr_where": "filled region"})
    write(results / "attributes" / "classifier.json", {
        "num_train": 20000, "num_heldout": 1440, "heldout_splits": ["valid", "test"], "mean_accuracy": 0.9,
        "mean_majority_accuracy": 0.8,
        "attributes": {"Smiling": {"accuracy": 0.915, "majority_accuracy": 0.5, "heldout_positive_rate": 0.48}}})
    write(results / "attributes" / "control.json", {
        "model": "pretrained/a", "sampler": "edm-dpm++2m", "steps": 10, "attributes": ["Smiling", "Bald"],
        "samples_per_attribute": 200, "fid_label": "FID-2k", "fid_reference": "20000 train images",
        "mixed_precision": "bf16", "guidance": {w: {"positive_rate": {"Smiling": rate, "Bald": rate / 10},
                                                    "fid": fid} for w, rate, fid in (("0.0", 0.5, 20.0),
                                                                                     ("5.0", 0.9, 30.0))}})
    assert results_tables.main(["--root", str(repository)]) == 0
    text = report.read_text()
    assert "old" not in text and "No edit" not in text
    assert ("| [fid_eyes_pc.json](results/edit/fid_eyes_pc.json) | eyes | pc | 50 | 100 | 1,000 | 30.00 | 20.00 |"
            in text)
    assert "| Smiling | 50.0 | 90.0 | 91.5 |" in text and "| Bald | 5.0 | 9.0 | — |" in text
    assert "| FID-2k (all attributes) | 20.00 | 30.00 |  |" in text
    assert "[control.json](results/attributes/control.json)" in text and "UNet bf16" in text
    assert results_tables.main(["--root", str(repository), "--check"]) == 0
