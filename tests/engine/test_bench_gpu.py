"""benchmarks/bench_gpu.py runs its whole path on the CPU with --dry-run, so GPU time is never spent on a crash."""

from __future__ import annotations

import json

import pytest

from tests.conftest import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_gpu.py"


def _bench():
    return load_script(SCRIPT, "_bench_gpu")


def test_dry_run_measures_every_section_and_writes_json(tmp_path, tiny_models):
    pytest.importorskip("torch")
    out = tmp_path / "gpu.json"
    args = ["--dry-run", "--models", str(tiny_models), "--model", "OU-J", "-n", "24",
            "--chunk", "8", "--batches", "2,4", "--per-point", "0", "--json", str(out)]
    assert _bench().main(args) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["dry_run"] is True and report["settings"]["batches"] == [2, 4]
    assert report["store"]["generated"] and report["read"]["complete"] and report["read"]["cutouts"] == 24
    assert report["read"]["gb_per_s"] > 0
    ort = report["ort"]["cpu-standing-in-for-cuda"]
    for name in ("OU-J",):  # one 66-px model: bf16 is emulated on most CPUs, a 200-px one takes long
        assert ort[name]["provider_used"] == "CPUExecutionProvider"
        assert set(ort[name]["sweep"]) == {"2", "4"} and ort[name]["best_img_s"] > 0
        assert ort[name]["max_delta_p"] == 0.0  # the same provider as the reference: exactly equal
        torch_run = report["torch_bf16"]["eager"][name]
        assert torch_run["best_img_s"] > 0 and torch_run["max_delta_p"] < 0.05
    e2e = report["end_to_end"]["1"]
    assert e2e["cutouts"] == 24 and e2e["cutouts_per_s"] > 0 and 0 < e2e["of_model_only_bound"]
    assert report["ensemble_model_only_cutouts_per_s"] > 0 and report["goal_cutouts_per_s"] == 20_000
    assert report["ensemble_chain"]["cutouts_per_s"] > 0 and report["ensemble_chain"]["call_sizes"] == {"OU-J": 16}


def test_an_exhausted_time_box_records_what_it_skipped(tmp_path, tiny_models):
    out = tmp_path / "gpu.json"
    args = ["--dry-run", "--models", str(tiny_models), "--model", "OU-J", "-n", "8", "--chunk", "8",
            "--batches", "2", "--time-box", "0.001", "--json", str(out)]
    assert _bench().main(args) == 0
    report = json.loads(out.read_text())
    assert report["ort"]["cpu-standing-in-for-cuda"]["OU-J"] == {"skipped": "time box"}
    assert report["end_to_end"]["1"] == {"skipped": "time box"}


def test_without_a_gpu_only_the_dry_run_is_offered(tmp_path):
    from lensengine.engine.sessions import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present here: the real benchmark would run")
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and not (tmp_path / "x.json").exists()
