"""Training: loss goes down, checkpoints resume exactly, export scores like torch."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from lensengine.catalogs.flags import Flag  # noqa: E402
from lensengine.catalogs.store import CutoutBatch, SurveyStore  # noqa: E402
from lensengine.engine.specs import get_spec  # noqa: E402

TRUTH = {"label": "int8", "theta_e": "float32", "arc_snr": "float32", "source_colour": "str", "kind": "str"}


def _grid(n):
    c = (np.arange(n) - (n - 1) / 2) / n * 20.0  # arcsec over the 20" field
    return np.meshgrid(c, c, indexing="ij")


def toy_batch(n: int, seed: int, start: int = 0) -> CutoutBatch:
    """Lenses: a blob plus a ring of radius theta_e; non-lenses: the blob alone (+ noise)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.6).astype(np.int8)
    theta = np.where(label == 1, rng.uniform(0.8, 2.5, n), np.nan).astype(np.float32)
    vis = np.empty((n, 200, 200), np.float32)
    nisp = np.empty((n, 3, 66, 66), np.float32)
    for size, out in ((200, "vis"), (66, "nisp")):
        yy, xx = _grid(size)
        r = np.hypot(yy, xx)
        for i in range(n):
            img = np.exp(-0.5 * (r / rng.uniform(0.3, 0.6)) ** 2)
            if label[i]:
                img = img + 0.6 * np.exp(-0.5 * ((r - theta[i]) / 0.2) ** 2)
            noise = rng.normal(0, 0.03, (3, size, size) if out == "nisp" else (size, size))
            if out == "vis":
                vis[i] = img + noise
            else:
                nisp[i] = img[None] * np.array([0.8, 1.0, 1.2])[:, None, None] + noise
    ids = np.arange(start, start + n, dtype=np.int64)
    truth = {"label": label, "theta_e": theta, "arc_snr": rng.uniform(1, 60, n).astype(np.float32),
             "source_colour": np.where(rng.random(n) < 0.5, "blue", "red"),
             "kind": np.where(label == 1, "single", "nonlens")}
    return CutoutBatch(object_id=ids, ra=np.full(n, 150.0), dec=np.full(n, 2.0), vis=vis, nisp=nisp,
                       flags=np.zeros(n, np.uint32), truth=truth)


def make_store(path, n: int = 96, seed: int = 1, chunk: int = 32, bad: int = 0):
    store = SurveyStore.create(path, survey="toy", chunk_size=chunk, truth_columns=TRUTH)
    for k, start in enumerate(range(0, n, chunk)):
        batch = toy_batch(min(chunk, n - start), seed + k, start)
        if bad and k == 0:
            batch.vis[:bad] = np.nan                            # found by the Preprocessor
            batch.flags[bad:2 * bad] = np.uint32(Flag.INCOMPLETE_WRITE)  # store flag
        store.append("T0", batch)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("toy") / "train.zarr", n=64)


def _cfg(**kw):
    from lensengine.training.train import TrainConfig

    base = dict(model="OU-JYH", epochs=3, batch_size=16, lr=1e-3, precision="fp32", val_fraction=0.25, seed=7,
                prefetch=2, max_train=48, max_val=12, augment="none")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    from lensengine.training.train import train

    out = tmp_path_factory.mktemp("run") / "OU-JYH"
    return train(_cfg(epochs=3, max_train=32, max_val=8), store, out, progress=False)


def test_training_reduces_loss_and_logs(trained):
    with open(trained.out_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0 <= float(r["data_wait_frac"]) <= 1 and float(r["img_per_s"]) > 0
        assert math.isfinite(float(r["val_loss"])) and 0 <= float(r["val_acc"]) <= 1
    assert trained.stop_reason == "epochs" and trained.epochs_run == 3
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert trained.best_epoch == int(best["epoch"])
    assert (trained.out_dir / "last.pt").is_file() and (trained.out_dir / "best.pt").is_file()


def test_checkpoint_carries_config_and_export_matches_torch(trained, store):
    import onnxruntime as ort

    from lensengine.engine.models import load_entry
    from lensengine.engine.preprocess import Preprocessor
    from lensengine.training.checkpoint import load_checkpoint
    from lensengine.training.networks import PLensModel, build_model

    ck = load_checkpoint(trained.best_checkpoint)
    assert ck["config"]["model"] == "OU-JYH" and ck["config"]["batch_size"] == 16 and ck["epoch"] == trained.best_epoch
    entry = load_entry(trained.onnx)
    assert entry.name == "OU-JYH" and entry.source == "trained here"
    assert '"lr": 0.001' in entry.metadata["training_config"]
    assert "best_val_loss" in entry.metadata["metrics"]

    net = build_model("OU-JYH")
    net.load_state_dict(ck["best_state"])
    batch = SurveyStore.open(store).read_chunk("T0", 0)
    x = Preprocessor([get_spec("OU-JYH")])(batch.bands()).inputs["OU-JYH"]
    with torch.no_grad():
        ref = PLensModel(net.eval())(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(trained.onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"cutout": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_resume_is_exact(store, tmp_path):
    from lensengine.training.checkpoint import load_checkpoint
    from lensengine.training.train import train

    # the sky recipe's random state: per-cutout augmentation seeds and hard-negative scores
    cfg = _cfg(model="OU-J", epochs=2, augment="full", hard_negatives=0.3, max_train=32, max_val=8)
    full = train(cfg, store, tmp_path / "full", progress=False, export=False)
    part = train(cfg, store, tmp_path / "part", progress=False, export=False, stop_after=1)
    assert part.stop_reason == "interrupted" and part.epochs_run == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, store, tmp_path / "part", progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(replace(cfg, lr=1e-2), store, tmp_path / "part", resume=True, progress=False)
    resumed = train(cfg, store, tmp_path / "part", progress=False, export=False, resume=True)
    assert resumed.epochs_run == 2
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
        assert torch.equal(a["best_state"][key], b["best_state"][key]), key
    sa, sb = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"])
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]
    assert torch.equal(a["rng"]["shuffle"], b["rng"]["shuffle"])
    assert torch.equal(a["hard_scores"], b["hard_scores"]) and not torch.isnan(a["hard_scores"]).any()
    n_neg = round(a["data"]["n_train"] * (1 - a["data"]["lens_fraction"]))
    assert [r["n_hard"] for r in a["history"]] == [0, math.ceil(0.3 * n_neg)]  # seen twice in epoch 2
    # a finished run resumed again only re-exports (train --all --resume, session after session)
    again = train(cfg, store, tmp_path / "part", progress=False, resume=True)
    assert again.epochs_run == 2 and again.stop_reason == "epochs" and again.onnx.is_file()


def test_cosine_schedule_anneals_and_resumes_exactly(store, tmp_path):
    from lensengine.training.checkpoint import load_checkpoint
    from lensengine.training.train import scheduled_lr, train

    cfg = _cfg(model="OU-J", epochs=2, lr_schedule="cosine", max_train=32, max_val=8)
    # hand values: 1e-3 at the start, half at the middle, 1e-3 * (1 + cos(0.75 pi)) / 2 three quarters through
    assert scheduled_lr(cfg, 0) == pytest.approx(1e-3)
    assert scheduled_lr(cfg, 1) == pytest.approx(5e-4)
    assert scheduled_lr(cfg, 1, 0.5) == pytest.approx(1e-3 * (1 - math.sqrt(0.5)) / 2)
    assert scheduled_lr(_cfg(), 2, 0.5) == 1e-3  # constant: the paper's recipe
    full = train(cfg, store, tmp_path / "full", progress=False, export=False)
    assert [r["lr"] for r in full.history] == pytest.approx([1e-3, 5e-4])
    # 32 cutouts in batches of 16: the last step of epoch 2 ran at the rate 3/4 of the way through
    last = load_checkpoint(full.checkpoint)
    assert last["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(scheduled_lr(cfg, 1, 0.5))
    constant = train(replace(cfg, lr_schedule="constant"), store, tmp_path / "const", progress=False, export=False)
    assert not torch.equal(last["model_state"]["layer.0.weight"],
                           load_checkpoint(constant.checkpoint)["model_state"]["layer.0.weight"])
    train(cfg, store, tmp_path / "part", progress=False, export=False, stop_after=1)
    with pytest.raises(ValueError, match="spans the 2 epochs"):
        train(replace(cfg, epochs=3), store, tmp_path / "part", resume=True, progress=False)
    resumed = load_checkpoint(train(cfg, store, tmp_path / "part", progress=False, export=False,
                                    resume=True).checkpoint)
    for key in last["model_state"]:
        assert torch.equal(last["model_state"][key], resumed["model_state"][key]), key


def test_data_loading_skips_and_caches(tmp_path):
    from lensengine.training.data import BatchLoader, load_cutouts, split_indices

    path = make_store(tmp_path / "bad.zarr", n=48, chunk=16, bad=3)
    spec = get_spec("OU-66")
    prepared, rep = load_cutouts(path, spec, cache="prepared")
    raw, _ = load_cutouts(path, spec, cache="raw")
    assert rep.n_read == 48 and rep.skipped_unusable == 3 and rep.skipped_flags == 3 and rep.n_used == 42
    # each cutout's store row (stack-aware training looks scores up by it): the six bad ones of chunk 0 left out
    np.testing.assert_array_equal(prepared.rows, np.arange(6, 48))
    np.testing.assert_array_equal(prepared.subset(np.array([0, 17])).rows, [6, 23])
    assert prepared.mode == "prepared" and raw.mode == "raw" and raw.nbytes < prepared.nbytes * 4
    idx = np.array([5, 0, 41])
    np.testing.assert_array_equal(prepared.batch(idx)[0], raw.batch(idx)[0])
    np.testing.assert_array_equal(prepared.batch(idx)[1], raw.batch(idx)[1])
    # VIS-only models do not care about the NaN... they read VIS: same skip; NISP models keep them
    nisp_only, rep2 = load_cutouts(path, get_spec("OU-J"), limit=10)
    assert rep2.skipped_unusable == 0 and len(nisp_only) == 10
    tr, va = split_indices(42, 0.25, 3)
    assert len(va) == 10 and len(set(tr) | set(va)) == 42 and np.array_equal(split_indices(42, 0.25, 3)[1], va)
    loader = BatchLoader(raw, np.arange(len(raw)), 8)
    sizes = [len(y) for _, y in loader]
    assert sizes == [8, 8, 8, 8, 8, 2] and loader.wait_s >= 0


def test_min_arc_snr_leaves_out_only_faint_lenses(tmp_path):
    from lensengine.training.data import load_cutouts

    path = make_store(tmp_path / "snr.zarr", n=48, chunk=16)
    spec = get_spec("OU-J")
    every, _ = load_cutouts(path, spec, cache="prepared")
    bright, rep = load_cutouts(path, spec, cache="prepared", min_arc_snr=30.0)
    store = SurveyStore.open(path)
    truth = {k: np.concatenate([store.read_chunk(t, i).truth[k] for t in store.tiles
                                for i in range(len(store.chunk_slices(t)))]) for k in ("label", "arc_snr")}
    faint = (truth["label"] == 1) & (truth["arc_snr"] < 30.0)
    assert 0 < faint.sum() < (truth["label"] == 1).sum()
    assert rep.skipped_faint == faint.sum() and rep.n_used == 48 - faint.sum()
    assert (bright.labels == 0).sum() == (every.labels == 0).sum()            # every negative kept
    assert (bright.labels == 1).sum() == (truth["label"] == 1).sum() - faint.sum()
    np.testing.assert_array_equal(bright.inputs, every.inputs[~faint])        # the same rows, in order
    np.testing.assert_array_equal(bright.rows, np.flatnonzero(~faint))        # ... named by their store rows
    assert rep.as_dict()["skipped_faint"] == faint.sum()


def test_time_budget_stops_cleanly_and_bf16_step(store, tmp_path):
    from lensengine.training.train import measure_throughput, resolve_precision, train

    r = train(_cfg(model="OU-J", epochs=50, max_time_min=1e-6, max_train=16, max_val=8), store, tmp_path / "t", progress=False)
    assert r.epochs_run == 1 and r.stop_reason.startswith("time budget") and r.onnx.is_file()
    prec = resolve_precision("auto", torch.device("cpu"))
    assert prec in ("bf16", "fp32")
    assert measure_throughput("OU-J", "bf16", batch_size=4, steps=1, warmup=0) > 0


def test_cli_train_and_export(store, tmp_path):
    from click.testing import CliRunner

    from lensengine.engine.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(cli, ["-q", "train", "--model", "OU-H", "--data", str(store), "--out", str(out),
                              "--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--max-train", "40",
                              "--no-export"])
    assert res.exit_code == 0, res.output
    assert "OU-H: 1 epochs" in res.output
    res = runner.invoke(cli, ["models", "export", str(out / "best.pt"), "--out", str(tmp_path / "x" / "OU_H.onnx")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x" / "OU_H.onnx").is_file()
    res = runner.invoke(cli, ["train", "--model", "OU-XX", "--data", str(store), "--out", str(out)])
    assert res.exit_code == 2 and "unknown model" in res.output


def _distance(state, w0) -> float:
    return sum(float(((state[k] - w0[k]) ** 2).sum()) for k in w0 if k.endswith("weight"))


def test_resume_on_another_training_store_restarts_mining(store, tmp_path, caplog):
    """train_store may change on resume; a store of another size drops the old mining scores, not the run."""
    from lensengine.training.train import train

    cfg = _cfg(model="OU-J", epochs=2, hard_negatives=0.3, max_train=None, max_val=None)
    val = make_store(tmp_path / "val.zarr", n=16, seed=5)
    train(cfg, store, tmp_path / "run", val=val, progress=False, export=False, stop_after=1)
    bigger = make_store(tmp_path / "bigger.zarr", n=96, seed=9)
    with caplog.at_level("WARNING", logger="lensengine.training.train"):
        resumed = train(cfg, bigger, tmp_path / "run", val=val, progress=False, export=False, resume=True)
    assert resumed.epochs_run == 2
    assert "has 96 cutouts, the checkpoint's mining scores 64" in caplog.text


def test_l2sp_pulls_towards_the_published_weights_and_resumes_exactly(store, tmp_path, published_weights_dir):
    from lensengine.training.checkpoint import load_checkpoint
    from lensengine.training.export import load_published
    from lensengine.training.networks import build_model
    from lensengine.training.train import _l2sp_anchor, _l2sp_penalty, train

    anchor = _l2sp_anchor(build_model("OU-J"))
    assert len(anchor) == 11 and all(w.dim() in (2, 4) for w, _ in anchor)  # 9 convs + 2 linear, no biases
    assert float(_l2sp_penalty(anchor).detach()) == 0.0

    w0 = load_published(published_weights_dir, "OU-J").state_dict()
    base = _cfg(model="OU-J", epochs=2, lr=3e-3, augment="flips", max_train=24, max_val=8,
                init_from=str(published_weights_dir))
    runs = {}
    for alpha in (0.0, 30.0):
        r = train(replace(base, l2sp=alpha), store, tmp_path / f"a{alpha}", progress=False, export=False)
        runs[alpha] = load_checkpoint(r.checkpoint)
    free, held = (_distance(runs[a]["model_state"], w0) for a in (0.0, 30.0))
    assert 0 < held < 0.5 * free  # the ablation knob works: --l2sp 0 drifts further
    assert [row["l2sp"] for row in runs[0.0]["history"]] == [0.0, 0.0]
    assert all(row["l2sp"] > 0 for row in runs[30.0]["history"])
    # resuming rebuilds w0 from the published weights, not from the checkpoint's current weights
    cfg = replace(base, l2sp=30.0)
    train(cfg, store, tmp_path / "part", progress=False, export=False, stop_after=1)
    resumed = load_checkpoint(train(cfg, store, tmp_path / "part", progress=False, export=False,
                                    resume=True).checkpoint)
    for key, value in runs[30.0]["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


def test_auto_precision_needs_bf16_hardware(tmp_path):
    from lensengine.training.train import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert not cpu_has_bf16(str(info))  # AVX2 only: bf16 would be emulated (slower than fp32)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16(str(info))
    assert not cpu_has_bf16(str(tmp_path / "absent"))


def test_validation_figures_are_hand_computed():
    from lensengine.training.train import selection_key, selection_used, val_figures

    rng = np.random.default_rng(11)
    neg, lens = rng.normal(0, 1, 250), rng.normal(1.5, 1, 40)
    labels = np.r_[np.zeros(250, int), np.ones(40, int)]
    figs = val_figures(labels, np.r_[neg, lens])
    cut = np.sort(neg)[::-1][2]  # FPR 1 % of 250 allows 2 false positives: the third highest negative
    assert figs["val_tpr_fpr1"] == pytest.approx(np.mean(lens > cut))
    assert figs["val_auroc"] == pytest.approx(np.mean(lens[:, None] > neg[None, :]))
    # too few negatives for FPR 1 %: no TPR, and the selection falls back to the loss
    few = val_figures(labels[160:], np.r_[neg, lens][160:])
    assert math.isnan(few["val_tpr_fpr1"]) and math.isfinite(few["val_auroc"])
    assert selection_used("tpr_fpr1", labels[160:]) == "loss" and selection_used("auroc", labels[160:]) == "auroc"
    assert selection_used("tpr_fpr1", labels) == "tpr_fpr1" and selection_used("auroc", np.zeros(9)) == "loss"
    # the operating point ranks first, the loss breaks ties; a row without the figure cannot be kept
    rows = [{"val_loss": 0.40, "val_tpr_fpr1": 0.20}, {"val_loss": 0.55, "val_tpr_fpr1": 0.25},
            {"val_loss": 0.50, "val_tpr_fpr1": 0.25}, {"val_loss": 0.30}]
    keys = [selection_key(r, "tpr_fpr1") for r in rows]
    assert max(k for k in keys if k is not None) == keys[2] and keys[3] is None
    assert max(selection_key(r, "loss") for r in rows) == selection_key(rows[3], "loss")


def test_kept_epoch_is_the_best_tpr_at_fpr1_and_old_checkpoints_kept_the_loss(store, tmp_path):
    from lensengine.training.checkpoint import checkpoint_metrics, load_checkpoint
    from lensengine.training.train import TrainConfig, selection_key, train

    val = make_store(tmp_path / "val.zarr", n=288, seed=21)  # about 115 negatives: FPR 1 % allows one
    run = train(_cfg(epochs=3, max_train=32, max_val=None), store, tmp_path / "run", val=val, progress=False,
                export=False)
    with open(run.out_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(math.isfinite(float(r["val_tpr_fpr1"])) and 0 <= float(r["val_auroc"]) <= 1 for r in rows)
    best = max(rows, key=lambda r: selection_key(r, "tpr_fpr1"))
    assert run.best_epoch == int(best["epoch"]) and run.best_val_loss == pytest.approx(float(best["val_loss"]))
    ck = load_checkpoint(run.checkpoint)
    assert ck["select_by_used"] == "tpr_fpr1" and checkpoint_metrics(ck)["selected_by"] == "tpr_fpr1"
    # a configuration written before the figure existed kept the lowest validation loss
    old = {k: v for k, v in ck["config"].items() if k != "select_by"}
    assert TrainConfig.from_dict(old).select_by == "loss"
    with pytest.raises(ValueError, match="select_by"):
        _cfg(select_by="f1").resolved()


# --- stack-aware training ---------------------------------------------------------------------------

def _stack_table(path, ids, probs: dict, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"OBJECT_ID": np.asarray(ids, np.int64), **columns,
                             **{"P_" + m.replace("-", "_"): np.asarray(p, np.float32) for m, p in probs.items()}}), path)
    return path


def _stack_json(path, models, coef, intercept):
    import json

    path.write_text(json.dumps({"kind": "lensengine logistic stack", "models": list(models),
                                "coef": list(coef), "intercept": intercept, "clip": 1e-6}))
    return path


def test_stack_offsets_are_the_other_members_log_odds_at_each_tables_tile_and_row(store, tmp_path):
    from lensengine.training.stack_aware import stack_offsets

    rng = np.random.default_rng(3)
    n = SurveyStore.open(store).total_cutouts()
    rows = rng.permutation(n)[: n - 5]  # shuffled, five cutouts left out; the toy store's object ID is its row
    probs = {m: rng.uniform(0.01, 0.99, rows.size) for m in ("OU-66", "OU-VIS", "OU-JYH")}
    probs["OU-VIS"][0] = np.nan  # a flagged cutout
    table = _stack_table(tmp_path / "s.parquet", rows, probs, TILE=np.full(rows.size, "T0"), ROW=rows)
    stack = _stack_json(tmp_path / "stack.json", ("OU-66", "OU-VIS", "OU-JYH"), (0.9, 0.8, -0.25), 0.5)
    offsets, coef = stack_offsets(table, stack, "OU-JYH", store)
    assert coef == -0.25 and offsets.shape == (n,)
    p32 = {m: p.astype(np.float32).astype(np.float64) for m, p in probs.items()}  # as the table holds them
    lo = {m: np.log(p / (1 - p)) for m, p in p32.items()}
    want = np.full(n, np.nan)
    want[rows] = 0.5 + 0.9 * lo["OU-66"] + 0.8 * lo["OU-VIS"]  # by hand; OU-JYH's own score plays no part
    assert np.isnan(offsets[rows[0]]) and np.isnan(offsets).sum() == 6
    np.testing.assert_allclose(offsets, want, rtol=1e-9, atol=1e-12, equal_nan=True)
    # the table of another store is refused, as `store top` refuses it
    with pytest.raises(ValueError, match="does not match the store"):
        stack_offsets(_stack_table(tmp_path / "m.parquet", np.where(np.arange(rows.size) == 3, 999, rows), probs,
                                   TILE=np.full(rows.size, "T0"), ROW=rows), stack, "OU-JYH", store)
    with pytest.raises(ValueError, match="scores tile 'elsewhere', which the store does not hold"):
        stack_offsets(_stack_table(tmp_path / "e.parquet", rows, probs, TILE=np.full(rows.size, "elsewhere"),
                                   ROW=rows), stack, "OU-JYH", store)
    with pytest.raises(ValueError, match="no member 'OU-200'"):
        stack_offsets(table, stack, "OU-200", store)
    with pytest.raises(ValueError, match="no cutout of the training store"):
        stack_offsets(_stack_table(tmp_path / "x.parquet", rows, {m: np.full(rows.size, np.nan) for m in probs},
                                   ROW=rows), stack, "OU-JYH", store)
    # a store joined by `store concat` repeats object IDs: the tile and row still name each cutout
    twice = SurveyStore.create(tmp_path / "twice.zarr", survey="toy", chunk_size=8, truth_columns=TRUTH)
    for _ in range(2):
        twice.append("T0", toy_batch(8, 1, 0))
    both, _ = stack_offsets(_stack_table(tmp_path / "t.parquet", np.tile(np.arange(8), 2),
                                         {m: np.tile(p[:8], 2) for m, p in probs.items()}, ROW=np.arange(16)),
                            stack, "OU-JYH", twice)
    np.testing.assert_allclose(both[8:], both[:8], rtol=0, atol=0, equal_nan=True)
    assert np.isfinite(both[1:8]).all() and np.isnan(both[0])


def test_stack_loss_is_the_stacks_weighted_cross_entropy_by_hand():
    from lensengine.training.train import _stack_loss

    logits = torch.tensor([[0.0, 1.0], [2.0, 0.5], [0.3, 0.1]])
    y = torch.tensor([1, 0, 1])
    w = torch.tensor([0.7, 0.3, 0.7])
    offsets = torch.tensor([0.5, -1.0, float("nan")])  # the third row has no offset: it counts for nothing
    z = np.array([0.8 * 1.0 + 0.5, 0.8 * -1.5 - 1.0])
    by_hand = (0.7 * np.log1p(np.exp(-z[0])) + 0.3 * np.log1p(np.exp(z[1]))) / (0.7 + 0.3)
    assert float(_stack_loss(logits, y, offsets, w, 0.8)) == pytest.approx(by_hand, rel=1e-6)


def test_stack_aware_training_runs_from_a_score_table_and_weight_zero_is_the_network_alone(store, tmp_path):
    from lensengine.training.checkpoint import load_checkpoint
    from lensengine.training.train import train

    opened = SurveyStore.open(store)
    labels = np.concatenate([opened.read_chunk("T0", k).truth["label"] for k in range(len(opened.chunk_slices("T0")))])
    # the rest of the stack is confidently wrong about every cutout: the stack's loss is all this network's
    table = _stack_table(tmp_path / "s.parquet", np.arange(labels.size), {"OU-66": np.where(labels == 1, 0.05, 0.95)},
                         ROW=np.arange(labels.size))
    stack = _stack_json(tmp_path / "stack.json", ("OU-66", "OU-JYH"), (1.0, 1.0), 0.0)
    states = {}
    for name, kw in (("alone", {}), ("w0", dict(stack_scores=str(table), stack_file=str(stack), stack_weight=0.0)),
                     ("w1", dict(stack_scores=str(table), stack_file=str(stack), stack_weight=1.0))):
        result = train(_cfg(epochs=1, max_train=32, max_val=8, **kw), store, tmp_path / name, progress=False,
                       export=False)
        states[name] = load_checkpoint(result.checkpoint)["model_state"]
    for k in states["alone"]:
        assert torch.equal(states["alone"][k], states["w0"][k]), k
    assert any(not torch.equal(states["alone"][k], states["w1"][k]) for k in states["alone"])


def test_stack_val_figures_rank_the_stacks_log_odds_by_hand():
    from lensengine.training.train import stack_val_figures

    labels = np.array([1, 1, 0, 0, 0])
    p = np.array([0.6, 0.3, 0.5, 0.2, 0.4])       # alone: the second lens is below two negatives
    offsets = np.array([0.0, 3.0, 0.0, np.nan, 0.0])  # the rest of the stack lifts it; row 3 has no offset
    figures = stack_val_figures(labels, p, offsets.astype(np.float32), 2.0)
    # z = offset + 2 logit(p): 0.81, 1.31, 0, (left out), -0.81: both lenses above both negatives kept
    assert figures["val_stack_auroc"] == 1.0 and set(figures) == {"val_stack_auroc", "val_stack_tpr_fpr1"}
    assert math.isnan(figures["val_stack_tpr_fpr1"])  # two negatives cannot place FPR 1 %
    offsets[1] = -3.0                                 # now the stack drags the second lens below both
    assert stack_val_figures(labels, p, offsets.astype(np.float32), 2.0)["val_stack_auroc"] == 0.5


def test_stack_val_scores_rank_the_epochs_by_the_stacks_figure(store, tmp_path):
    from lensengine.training.train import train

    val = make_store(tmp_path / "val.zarr", n=32, seed=11)
    labels = SurveyStore.open(val).read_chunk("T0", 0).truth["label"]
    # a weakly informative rest of the stack, and a stack that weighs this network negatively (-3): the stack
    # ranks the network's epochs unlike the network's own AUROC does
    rest = np.where(labels == 1, 0.5, -0.5) + np.random.default_rng(0).normal(0, 1.0, labels.size)
    table = _stack_table(tmp_path / "v.parquet", np.arange(labels.size), {"OU-66": 1 / (1 + np.exp(-rest))},
                         ROW=np.arange(labels.size))
    stack = _stack_json(tmp_path / "stack.json", ("OU-66", "OU-JYH"), (1.0, -3.0), 0.0)
    result = train(_cfg(select_by="auroc", stack_val_scores=str(table), stack_file=str(stack)), store,
                   tmp_path / "run", val=val, progress=False, export=False)
    with open(result.out_dir / "log.csv") as fh:
        rows = list(csv.DictReader(fh))

    def best(column):  # the epoch a figure keeps (ties: the lower validation loss)
        return max(range(len(rows)), key=lambda i: (float(rows[i][column]), -float(rows[i]["val_loss"]))) + 1

    assert len(rows) == 3 and best("val_auroc") != best("val_stack_auroc")
    assert result.best_epoch == best("val_stack_auroc")
    with pytest.raises(ValueError, match="score table of the validation store"):  # not a split of the training store
        train(_cfg(stack_val_scores=str(table)), store, tmp_path / "split", progress=False)
    # the same run without the table keeps the network's own best epoch
    alone = train(_cfg(select_by="auroc"), store, tmp_path / "alone", val=val, progress=False, export=False)
    assert alone.best_epoch == best("val_auroc")
