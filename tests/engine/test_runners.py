"""The runners (engine/runners.py): each agrees with ONNX Runtime fp32 within its stated bound on real
simulated cutouts, ``auto`` takes the fastest runner measured correct, and the choice reaches the catalogue."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lensengine.engine import runners
from lensengine.engine.runners import (MAX_DELTA_P, REFERENCE, RUNNERS, build_runner, choose_runners, decode_plan,
                                       encode_plan, load_calibration, measure, runner_cards, runner_for,
                                       save_calibration, uses_torch_weights)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Quantized copies and calibrations go to a test folder, never to the user's cache."""
    monkeypatch.setenv("LENSENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "lensengine-cache"))


@pytest.fixture(scope="module")
def shipped():
    from lensengine.engine.registry import resolve_models

    return {m.name: m for m in resolve_models(None, ["OU-J", "OU-66"])}


@pytest.fixture(scope="module")
def simulated(shipped):
    """Prepared inputs of 12 real simulated cutouts (mixed lenses and non-lenses, fixed seed) per model."""
    pytest.importorskip("lenstronomy", reason="the simulator needs the training extra")
    from lensengine.engine.preprocess import Preprocessor
    from lensengine.training.simulate import simulate_batch

    batch = simulate_batch("mixed", 12, 4243)
    bands = {"VIS": batch.vis, "Y": batch.nisp[:, 0], "J": batch.nisp[:, 1], "H": batch.nisp[:, 2]}
    prepared = Preprocessor([m.as_spec() for m in shipped.values()])(bands, 12)
    assert all(prepared.usable[name].all() for name in shipped)
    return prepared.inputs


# --- plans and provenance ------------------------------------------------------------------

def test_a_plan_names_each_models_runner_and_reaches_the_provenance(shipped):
    models = list(shipped.values())
    assert encode_plan({"OU-J": "openvino-fp32", "OU-66": "openvino-fp32"}) == "openvino-fp32"
    mixed = encode_plan({"OU-J": "ort-int8", "OU-66": "ort-fp32"})
    assert decode_plan(mixed) == {"OU-J": "ort-int8", "OU-66": "ort-fp32"}
    assert runner_for(mixed, "OU-66") == "ort-fp32" and runner_for("bf16", "OU-J") == "torch-bf16"
    with pytest.raises(ValueError, match="OU-VIS"):
        runner_for(mixed, "OU-VIS")
    cards = runner_cards(mixed, models)
    assert cards["RUNNER1"][0] == "ort-int8" and cards["RUNNER2"][0] == "ort-fp32"
    assert runner_cards("fp32", models)["PRECISN"][0] == "fp32"  # the legacy spelling is kept as given
    assert uses_torch_weights("torch-compile-fp32", "OU-J") and not uses_torch_weights(mixed, "OU-J")


# --- the choice -----------------------------------------------------------------------------

def _entry(model, rates: dict[str, tuple[float, float]]) -> dict:
    return {f"{model.sha256}|{runners.cpu_signature()}": {
        "model": model.name, "runners": {k: {"img_s": r, "max_delta_p": dp} for k, (r, dp) in rates.items()}}}


def test_auto_takes_the_fastest_runner_measured_correct_and_faster(shipped, monkeypatch):
    monkeypatch.setattr(runners, "runner_problem", lambda name, model=None, device="cpu": None)
    j, s66 = shipped["OU-J"], shipped["OU-66"]
    calibration = {
        # the fastest is off by 0.03: not correct; the next is correct and faster than the reference
        **_entry(j, {"ort-fp32": (100, 0.0), "openvino-int8": (300, 0.03), "openvino-fp32": (150, 1e-6),
                     "torch-bf16": (120, 0.004)}),
        # correct but slower than the reference: the reference stays
        **_entry(s66, {"ort-fp32": (100, 0.0), "openvino-fp32": (90, 1e-6)}),
    }
    assert choose_runners([j, s66], "auto", "cpu", calibration) == {"OU-J": "openvino-fp32", "OU-66": "ort-fp32"}
    # a GPU run, or a model nobody measured on this CPU, runs the reference
    assert choose_runners([j], "auto", "cuda", calibration) == {"OU-J": REFERENCE}
    assert choose_runners([j, s66], "auto", "cpu", {}) == {"OU-J": REFERENCE, "OU-66": REFERENCE}


def test_auto_says_when_a_missing_package_keeps_the_fastest_correct_runner_out(shipped, monkeypatch, caplog):
    """Without OpenVINO installed, auto runs what it can, and says once what the user gives up and how to get it."""
    real = runners._importable
    monkeypatch.setattr(runners, "_importable", lambda module: module != "openvino" and real(module))
    monkeypatch.setattr(runners, "_HINTED", set())
    j = shipped["OU-J"]
    calibration = _entry(j, {"ort-fp32": (100, 0.0), "openvino-fp32": (130, 1e-6), "openvino-int8": (300, 0.2)})
    with caplog.at_level("WARNING", logger="lensengine.engine.runners"):
        assert choose_runners([j], "auto", "cpu", calibration) == {"OU-J": REFERENCE}
        assert choose_runners([j], "auto", "cpu", calibration) == {"OU-J": REFERENCE}
    hints = [r.getMessage() for r in caplog.records if "lensengine[fast]" in r.getMessage()]
    assert hints == ["OU-J: openvino-fp32 was measured 1.30x ONNX Runtime fp32 and as correct on this CPU, but "
                     "the Python package(s) openvino are not installed (pip install 'lensengine[fast]'); "
                     "running ort-fp32"]  # once, and never for the incorrect int8


def test_a_forced_runner_that_cannot_run_here_is_refused_with_the_reason(shipped, monkeypatch):
    real = runners._importable
    monkeypatch.setattr(runners, "_importable", lambda module: module != "openvino" and real(module))
    with pytest.raises(ValueError, match="openvino-fp32 cannot run model OU-J: .*needs the Python package"):
        choose_runners([shipped["OU-J"]], "openvino-fp32", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        choose_runners([shipped["OU-J"]], "ort-int8", "cuda")
    assert choose_runners([shipped["OU-J"]], "fp32", "cpu") == {"OU-J": "ort-fp32"}


def test_calibration_files_merge_and_a_bad_one_is_skipped(tmp_path, shipped, caplog):
    good = save_calibration(_entry(shipped["OU-J"], {"ort-fp32": (100, 0.0)}), tmp_path / "a.json")
    save_calibration(_entry(shipped["OU-66"], {"ort-fp32": (80, 0.0)}), good)  # merged, not replaced
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    entries = load_calibration([good, bad])
    assert {e["model"] for e in entries.values()} == {"OU-J", "OU-66"}
    assert "b.json ignored" in caplog.text
    # rewritten for a list of models, the file keeps their entries alone (a replaced network's go)
    save_calibration(_entry(shipped["OU-J"], {"ort-fp32": (120, 0.0)}), good, only_models=[shipped["OU-J"]])
    entries = load_calibration([good])
    assert [(e["model"], e["runners"]["ort-fp32"]["img_s"]) for e in entries.values()] == [("OU-J", 120)]


def test_the_shipped_calibration_names_shipped_networks_alone():
    """Every entry of engine/data/runner_calibration.json is for a network shipped now: an entry of a
    replaced network is dead weight that hides that the CPU class it was measured on has no entry."""
    from lensengine.engine.registry import resolve_models

    shas = {runners._model_sha(m) for m in resolve_models(None)}
    keys = load_calibration([runners.SHIPPED_CALIBRATION])
    assert keys and {k.split("|", 1)[0] for k in keys} <= shas


def test_measure_refuses_a_runner_whose_scores_drift(shipped, simulated, monkeypatch):
    """The calibration itself must catch a runner off by more than the bound, however fast."""
    x = simulated["OU-J"]
    real = runners.build_runner

    def drifting(model, name, device="auto", threads=0):
        run = real(model, REFERENCE, device, threads)
        return run if name == REFERENCE else (lambda a: np.clip(run(a) + 0.02, 0, 1))

    monkeypatch.setattr(runners, "build_runner", drifting)
    monkeypatch.setattr(runners, "runner_problem", lambda name, model=None, device="cpu": None)
    result = measure(shipped["OU-J"], x, ["openvino-fp32"], repeats=1, min_seconds=0)
    drift = result["runners"]["openvino-fp32"]
    assert drift["max_delta_p"] > MAX_DELTA_P
    assert not runners.eligible(drift, reference_rate=0.0)
    assert result["runners"][REFERENCE]["max_delta_p"] == 0.0 and result["cpu"] == runners.cpu_signature()


def test_measured_candidates_beside_the_runners_are_never_chosen(shipped, simulated, monkeypatch):
    """A benchmark's candidate (``extra``: say an int8 recipe) is measured in the same run, but only runners
    can be chosen, however fast and correct a candidate measured."""
    model, x = shipped["OU-J"], simulated["OU-J"]
    ref = build_runner(model, REFERENCE, "cpu", 1)
    result = measure(model, x, [REFERENCE], threads=1, repeats=1, min_seconds=0,
                     extra={"int8:same": lambda: ref, "int8:off": lambda: (lambda a: np.clip(ref(a) + 0.03, 0, 1))})
    got = result["runners"]
    assert list(got) == [REFERENCE, "int8:same", "int8:off"]
    assert got["int8:same"]["max_delta_p"] == 0.0 and got["int8:off"]["max_delta_p"] > MAX_DELTA_P
    monkeypatch.setattr(runners, "runner_problem", lambda name, model=None, device="cpu": None)
    got["int8:same"]["img_s"] = 100 * got[REFERENCE]["img_s"]  # even were it 100x faster
    calibration = runners.calibration_entries([result])
    assert choose_runners([model], "auto", "cpu", calibration) == {"OU-J": REFERENCE}


def test_the_runners_take_turns_so_a_drifting_machine_slows_them_alike(shipped, simulated):
    """Timed one after another, a runner measured while the VM ran slow looked slower than it is (stop 33:
    OU-66's openvino-int8 measured 6 743 img/s in one run, 3 924 in the next); in turns, each round times all."""
    model, x = shipped["OU-J"], simulated["OU-J"]
    ref = build_runner(model, REFERENCE, "cpu", 1)
    calls: list[str] = []

    def recording(name):
        return lambda: (lambda a: (calls.append(name), ref(a))[1])

    result = measure(model, x[:4], [REFERENCE], batch=4, threads=1, repeats=3, min_seconds=0,
                     extra={"a": recording("a"), "b": recording("b")})
    assert calls == ["a", "b"] + ["a", "b"] * 3  # the warm-ups, then three rounds in turn
    assert all(result["runners"][n]["img_s"] > 0 for n in (REFERENCE, "a", "b"))


# --- agreement with the reference on real simulated cutouts ----------------------------------

_SLOW_COMPILE = "torch.compile spends 1-2 minutes compiling on a 2-core machine: set LENSENGINE_TEST_COMPILE=1"


@pytest.mark.parametrize("name", [n for n in RUNNERS if n != REFERENCE])
def test_each_runner_agrees_with_fp32_within_its_bound(name, shipped, simulated):
    model = shipped["OU-J"]
    problem = runners.runner_problem(name, model, "cpu")
    if problem:
        pytest.skip(problem)
    if name.startswith("torch-compile") and not os.environ.get("LENSENGINE_TEST_COMPILE"):
        pytest.skip(_SLOW_COMPILE)
    x = simulated["OU-J"]
    ref = build_runner(model, REFERENCE, "cpu", 1)(x).reshape(-1)
    p = np.asarray(build_runner(model, name, "cpu", 1)(x), dtype=np.float64).reshape(-1)
    assert p.shape == ref.shape and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    dp = np.abs(p - ref)
    bound = RUNNERS[name].bound
    if bound is not None:
        assert dp.max() <= bound, f"{name}: max |dP| {dp.max():.2e} > its bound {bound}"
    else:  # int8 claims no bound (auto uses it only where a calibration measured <= 0.01): still the same model
        assert np.corrcoef(p, ref)[0, 1] > 0.9 and dp.mean() < 0.05, f"{name}: mean |dP| {dp.mean():.3f}"
    assert not np.array_equal(p, ref) or bound == 0.0 or name.endswith("fp32")  # it really ran another way


@pytest.mark.parametrize("parts", [2, 3])
def test_the_split_runners_bf16_bits_score_exactly_as_their_fp32_parts(parts, shipped, simulated):
    """The split runners hand OpenVINO the parts as a bf16 tensor of bit patterns: the same numbers as the
    float32 parts, so the same scores bit for bit (at fp32 on any CPU; at bf16 where the CPU has it)."""
    pytest.importorskip("openvino", reason="the split runners run on OpenVINO (the fast extra)")
    pytest.importorskip("onnx", reason="the split copy is written with onnx (the training extra)")
    from lensengine.engine.bf16split import split_input, split_input_bits, split_model

    model, x = shipped["OU-66"], simulated["OU-66"]
    bits = split_input_bits(x, parts)
    assert bits.dtype == np.uint16 and bits.shape == (len(x), parts * x.shape[1], *x.shape[2:])
    parts32 = split_input(x, parts)
    np.testing.assert_array_equal(np.left_shift(bits.astype(np.uint32), 16).view(np.float32), parts32)
    path = str(split_model(model, runners._model_sha(model), runners.cache_dir() / "runners", parts,
                           lambda: runners.calibration_inputs(model)))
    hints = ["f32"] + (["bf16"] if "BF16" in runners._openvino_capabilities() else [])
    for hint in hints:
        as_bits = runners._openvino_runner(path, hint, 1, bf16_input=True)(split_input_bits(x, parts))
        as_floats = runners._openvino_runner(path, hint, 1)(parts32)
        np.testing.assert_array_equal(as_bits, as_floats, err_msg=f"hint {hint}")
    hi_only = split_input_bits(x, parts).copy()
    hi_only[:, x.shape[1]:2 * x.shape[1]] = 0  # without x_lo the scores move: the bits do reach the network
    assert not np.array_equal(runners._openvino_runner(path, "f32", 1, bf16_input=True)(hi_only), as_bits)


def test_the_int8_copy_is_made_once_and_reused(shipped):
    if runners.runner_problem("ort-int8", shipped["OU-J"], "cpu"):
        pytest.skip(runners.runner_problem("ort-int8", shipped["OU-J"], "cpu"))
    first = runners.quantized_model(shipped["OU-J"])
    stamp = first.stat().st_mtime_ns
    assert runners.quantized_model(shipped["OU-J"]) == first and first.stat().st_mtime_ns == stamp
    assert first.parent == runners.cache_dir() / "runners" and shipped["OU-J"].sha256[:20] in first.name


_FIRST_CALLS_AT_ONCE = """
import sys, threading
import numpy as np
from lensengine.engine.registry import resolve_models
from lensengine.engine.scoring import make_runner

models = resolve_models(None, ["OU-J", "OU-Y", "OU-H"])
run = [make_runner(m, "openvino-fp32", "cpu", 1) for m in models]
sys.setswitchinterval(1e-6)  # the GIL changes hands as often as it can, with a Python thread always asking
busy = True
def spin():
    while busy:
        sum(range(100))
threading.Thread(target=spin, daemon=True).start()
start = threading.Barrier(len(run))
def first_call(r):
    start.wait()
    r(np.zeros((8, 1, 66, 66), np.float32))
lanes = [threading.Thread(target=first_call, args=(r,)) for r in run]
[t.start() for t in lanes]
[t.join() for t in lanes]
busy = False
print("scored")
"""


def test_lanes_making_their_first_openvino_calls_at_once_do_not_deadlock(tmp_path, shipped):
    """Three OpenVINO runners called for the first time at once, from three threads, in fresh processes whose
    GIL changes hands every microsecond.  Without the first inference at build time (``_first_inference``)
    11 of 12 such processes hung for good (a C++ static's guard against the GIL); with it none does."""
    import subprocess
    import sys

    problem = runners.runner_problem("openvino-fp32", shipped["OU-J"], "cpu")
    if problem:
        pytest.skip(problem)
    env = {**os.environ, "LENSENGINE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_CALLS_AT_ONCE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    hung = 0
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung += 1
            continue
        assert proc.returncode == 0 and "scored" in out, err[-2000:]
    assert hung == 0, f"{hung} of {len(procs)} processes hung in their first OpenVINO calls"


# --- the run -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--runner", "auto"], []], ids=["runner-auto", "default"])
def test_the_runner_choice_is_in_a_real_runs_catalogue(tmp_path, shipped, flags):
    """`lensengine run --runner auto` with a calibration that makes one runner eligible for OU-J only; the
    default (`--precision auto`) chooses the same way on the CPU (stop 33: it took torch bf16 on any bf16 CPU)."""
    from astropy.io import fits
    from click.testing import CliRunner

    from lensengine.engine.cli import cli
    from tests.engine.conftest import make_store

    fast = next((n for n in ("openvino-fp32", "ort-int8") if not runners.runner_problem(n, shipped["OU-J"])), None)
    if fast is None:
        pytest.skip("neither openvino nor onnx is installed: no second runner to choose")
    save_calibration({**_entry(shipped["OU-J"], {"ort-fp32": (100, 0.0), fast: (150, 1e-5)}),
                      **_entry(shipped["OU-66"], {"ort-fp32": (100, 0.0), fast: (150, 0.2)})})
    store = tmp_path / "survey.zarr"
    make_store(store, tiles=("T0",), n_per_tile=16, chunk_size=16, bad=False)
    out = tmp_path / "cands.fits"
    result = CliRunner().invoke(cli, ["run", "--tiles", str(store), "--out", str(out), "--model", "OU-J",
                                      "--model", "OU-66", *flags, "--threshold", "0", "--no-dashboard",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header = fits.getheader(out, 1)
    assert header["MODEL1"] == "OU-J" and header["RUNNER1"] == fast
    assert header["MODEL2"] == "OU-66" and header["RUNNER2"] == "ort-fp32"  # 0.2 off: not correct
    assert header["PRECISN"] == "per-model"


def test_runner_and_precision_together_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from lensengine.engine.cli import cli

    result = CliRunner().invoke(cli, ["run", "--tiles", str(tmp_path / "none.zarr"), "--runner", "ort-fp32",
                                      "--precision", "bf16", "--model", "OU-J"])
    assert result.exit_code == 2 and "--runner or --precision, not both" in result.output
