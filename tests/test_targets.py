"""The targets table: each figure read from its result file and judged against its threshold; "not measured" without
the file."""

import json

import pytest

from pipeline.evaluation import targets
from pipeline.sampling.schedulers import SAMPLERS


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def evaluation(fid, sampler, nfe=20.0, num_samples=10_000, corrected=False):
    return {"fid": fid, "sampler": sampler, "nfe": nfe, "num_samples": num_samples,
            "mean_colour_correction": corrected}


def row(results, figure_start):
    return next(line for line in targets.targets_table(results) if line.startswith(f"| {figure_start}"))


def measure(results, index):
    return targets.TARGETS[index].measure(results)


def test_without_result_files_every_target_is_not_measured(tmp_path):
    lines = targets.targets_table(tmp_path)
    assert len(lines) == 3 + len(targets.TARGETS)
    assert all("| not measured | — | — |" in line for line in lines[2:-1])


def test_fid10k_targets_split_deterministic_from_any_sampler(tmp_path):
    results = tmp_path
    write(results / "eval" / "a.json", evaluation(12.0, "ddpm"))                  # stochastic
    write(results / "eval" / "b.json", evaluation(16.0, "edm-dpm++2m"))           # deterministic
    write(results / "eval" / "c.json", evaluation(11.0, "ddim", corrected=True))  # corrected: not for row 1
    write(results / "eval" / "d.json", evaluation(5.0, "dpm++2m", nfe=50.0))      # over budget
    write(results / "eval" / "e.json", evaluation(4.0, "heun", nfe=25.0, num_samples=2000))  # too few samples
    deterministic, any_sampler = measure(results, 0), measure(results, 1)
    assert deterministic.value == 16.0 and deterministic.source.name == "b.json"
    assert any_sampler.value == 11.0 and "ddim + mean-colour correction" in any_sampler.text
    assert "| 16.00 (edm-dpm++2m, 20 NFE, N = 10,000) | **no** |" in row(results, "FID-10k (20k")
    assert "| yes |" in row(results, "FID-10k, any")


def sweep(results, fids: dict, num_samples=2000):
    points = [{"sampler": name, "nfe": nfe, "fid": fid, "num_samples": num_samples}
              for name, (nfe, fid) in fids.items()]
    write(results / "nfe" / "summary.json", {"points": points})


OFFERED_VP = [name for name, s in SAMPLERS.items() if not s.edm and s.nfe(1) is not None]


def test_sampler_spread_needs_every_offered_sampler_and_reads_worst_over_best(tmp_path):
    fids = {name: (20.0, 30.0) for name in OFFERED_VP}
    fids["ddpm"] = (20.0, 25.0)
    fids["ddim"] = (20.0, 36.0)
    sweep(tmp_path, fids)
    spread = measure(tmp_path, 2)
    assert spread.value == pytest.approx((36.0 / 25.0, 0))
    assert targets.TARGETS[2].reached(spread.value) and "over 9 of 9 offered samplers" in spread.text
    del fids["unipc"]
    fids["pc"] = (10.0, 20.0)  # 10 NFE: outside 20-25, so pc counts as not measured too
    sweep(tmp_path, fids)
    spread = measure(tmp_path, 2)
    assert spread.value == pytest.approx((36.0 / 25.0, 2)) and "not measured: unipc, pc" in spread.text
    # within 1.5x so far, but a missing sampler could still raise the ratio: undecided, not reached
    assert targets.TARGETS[2].reached(spread.value) is None
    fids["ddim"] = (20.0, 40.0)
    sweep(tmp_path, fids)
    assert targets.TARGETS[2].reached(measure(tmp_path, 2).value) is False  # 1.6x: no missing sampler can undo it


def test_sampler_spread_offers_the_edm_samplers_to_an_edm_model(tmp_path):
    sweep(tmp_path, {"ddpm": (20.0, 30.0), "edm-euler": (20.0, 40.0)})
    assert f"over 2 of {sum(s.nfe(1) is not None for s in SAMPLERS.values())} offered" in measure(tmp_path, 2).text


def test_denoiser_response_takes_the_lowest_slope_at_high_noise(tmp_path):
    labels = [{"t": 999, "mean_slope_ratio": 0.99, "amplitude_slope": 1.0},
              {"t": 700, "mean_slope_ratio": 0.85, "amplitude_slope": 0.95},
              {"t": 500, "mean_slope_ratio": 0.10, "amplitude_slope": 0.20}]  # below 700: not part of the target
    write(tmp_path / targets.SHIPPED_RESPONSE, {"labels": labels})
    response = measure(tmp_path, 3)
    assert response.value == (0.85, 0.95) and targets.TARGETS[3].reached(response.value)
    labels[0]["amplitude_slope"] = 0.5
    write(tmp_path / targets.SHIPPED_RESPONSE, {"labels": labels})
    assert not targets.TARGETS[3].reached(measure(tmp_path, 3).value)


def test_recipe_ratio_compares_best_samplers_and_reports_the_deterministic_ones(tmp_path):
    recipes = [{"recipe": targets.OUR_RECIPE, "sampler": "edm-dpm++2m-sde", "fid": 100.0},
               {"recipe": targets.OUR_RECIPE, "sampler": "edm-dpm++2m", "fid": 120.0},
               {"recipe": targets.BASELINE_RECIPE, "sampler": "ddpm", "fid": 110.0},
               {"recipe": targets.BASELINE_RECIPE, "sampler": "dpm++2m", "fid": 300.0},
               {"recipe": "other", "sampler": "ddpm", "fid": 1.0}]
    write(tmp_path / "recipes_v2" / "summary.json", {"recipes": recipes})
    ratio = measure(tmp_path, 4)
    assert ratio.value == pytest.approx(100 / 110) and "0.40× with deterministic samplers" in ratio.text
    assert not targets.TARGETS[4].reached(ratio.value)


def test_heldout_gap_is_the_model_minus_its_real_image_floor(tmp_path):
    write(tmp_path / targets.SHIPPED_HELDOUT, {"model_scores": {"fid": 30.0}, "train_floor": {"fid": 24.5},
                                               "fid_above_floor": 5.5, "num_samples": 1440})
    assert row(tmp_path, "FID against held-out").endswith(
        "| 5.50 (FID-1,440 30.00; 1,440 real train images 24.50) | yes | [celeba-64.json](heldout/celeba-64.json) |")
