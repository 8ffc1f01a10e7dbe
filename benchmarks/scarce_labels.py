"""Scarce labels (issue #17): pseudo-labelling on 10 % of the labels against the same recipe on 100 % and on
the 10 % alone, and a simulated labelling loop (pipeline.label.suggest's order against random picks).

Each variant runs medpipe's own steps in-process (validate, preprocess, balance, train) on a copy of the
images under --scratch (medpipe refuses data outside its data root) and is scored on the test split:
chest_xray_kermany224's official test split, and for blood_cells_pbc a stratified 15 % test split fixed once
(seed 0). Variants per dataset and seed: `full` (every train row labelled), `sup10` (a seeded, stratified
10 % of the train rows, the rest dropped), `semi10` (the same 10 %, the rest kept with an empty label, semi
pseudo_label threshold 0.95, rounds 1), `share10` (the same, picking by class_share: the most confident
--share * round of each class the teacher assigns, --share-rounds rounds), `cons10` (the same, consistency
training from the teacher's weights: --cons-threshold, --cons-mu, --cons-weight, --cons-align), `pre10` (the
same 10 % and pool, the encoder first pre-trained by SimCLR on train + pool images: --pre-epochs,
--pre-temperature, --pre-batch; then supervised) and `precons10` (that pre-training, then cons10). The loop starts
from sup10's labels; per round the oracle labels 5 % of the original pool (held-back truth) in suggest's review order or
at random, and the model is retrained.

preprocess.color is `auto`, as in params.yaml (Params' own default is gray): the blood cells train in RGB.
Before 2026-12-04's second run it was left at gray, so the first blood figures are of grayscale cells.

Prints one JSON object per line (see docs/benchmarks.md). Needs /work/shared/datasets (or --shared).
Usage: python benchmarks/scarce_labels.py [--datasets chest,blood] [--seeds 0,1,2] [--parts variants,loop]
       [--limit 300 --epochs 2]  (a smoke test on a stratified subset)
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pipeline.model  # noqa: F401  (registers the custom layer before a model is loaded)
import pipeline.train
from pipeline import autoparams, balance, preprocess, train, validate
from pipeline.config import Params, Workspace
from pipeline.metrics import macro_roc_auc
from pipeline.shards import Shards

DATASETS = {"chest": "chest_xray_kermany224", "blood": "blood_cells_pbc"}
LABELLED = 0.10  # share of the train rows labelled in sup10 / semi10
ROUND_SHARE = 0.05  # share of the original pool the oracle labels per loop round
ROUNDS = 3
SEMI_VARIANTS = {  # the semi params of the variants that keep the unlabelled train rows (share10: --share...)
    "semi10": {"method": "pseudo_label", "criterion": "threshold", "threshold": 0.95, "rounds": 1},
    "share10": {"method": "pseudo_label", "criterion": "class_share", "share": 0.2, "rounds": 2},
    "cons10": {"method": "consistency", "threshold": 0.95, "rounds": 1, "mu": 2, "weight": 1.0},
}
PRETRAIN_VARIANTS = {"pre10": None, "precons10": "cons10"}  # pre-training, then this semi variant (None: supervised)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def emit(record: dict, log: Path | None, bench: str = "scarce_labels") -> None:
    """Print one JSON line `{"bench": bench, ...}` (and append it to `log`)."""
    line = json.dumps({"bench": bench, **record})
    print(line, flush=True)
    if log is not None:
        with log.open("a") as f:
            f.write(line + "\n")


def stratified(df: pd.DataFrame, share: float, seed: int) -> pd.Index:
    """A seeded sample of `share` of each label's rows (at least one per label)."""
    rng = np.random.default_rng(seed)
    picked = []
    for _, rows in df.groupby("label", sort=True):
        n = max(1, round(share * len(rows)))
        picked += list(rng.choice(rows.index.to_numpy(), n, replace=False))
    return pd.Index(sorted(picked))


def truth_manifest(name: str, shared: Path, limit: int | None) -> pd.DataFrame:
    """path,label,split of every image (blood: a stratified 15 % test split, seed 0); --limit: a subset."""
    df = pd.read_csv(shared / DATASETS[name] / "manifest.csv", dtype=str, keep_default_na=False)
    if name == "blood":
        df["split"] = "train"
        df.loc[stratified(df, 0.15, 0), "split"] = "test"
    df = df[["path", "label", "split"]]
    if limit:  # a smoke test: a stratified subset of each split, test a quarter of train
        parts = [df[df.split == "train"], df[df.split == "test"]]
        keep = [p.loc[stratified(p, min(1.0, n / len(p)), 0)] for p, n in zip(parts, (limit, max(40, limit // 4)))]
        df = pd.concat(keep)
    return df.reset_index(drop=True)


def copy_data(name: str, shared: Path, root: Path) -> None:
    """The images, once, under the scratch data root (medpipe refuses symlinks out of it)."""
    src = shared / DATASETS[name]
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        if not (root / folder.name).exists():
            shutil.copytree(folder, root / folder.name)


def base_params(folder: Path, seed: int, epochs: int | None, semi: dict | None, pretrain: dict | None = None) -> dict:
    raw = {
        "validate": {"labels": "auto"},
        "preprocess": {"size": 64, "seed": seed, "color": "auto"},
        "model": {"name": "seed_cnn"},
        "train": {"seed": seed},
        "register": {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "artifact_root": str(folder / "art")},
    }
    if epochs:
        raw["train"].update(epochs=epochs, min_epochs=min(5, epochs), patience=5)
    if semi:
        raw["semi"] = semi
    if pretrain:
        raw["pretrain"] = pretrain
    return raw


class Recorder:
    """Captures what train.run_step keeps to itself: each round's picks and epochs per phase."""

    def __init__(self) -> None:
        self.picks: list = []
        self.original = pipeline.train.pick

        def pick(proba, params, round_):
            pseudo = self.original(proba, params, round_)
            self.picks.append(pseudo)
            return pseudo

        pipeline.train.pick = pick

    def callback(self):
        import keras

        epochs = self.epochs = []

        class Count(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                epochs.append(0)

            def on_epoch_end(self, epoch, logs=None):
                epochs[-1] += 1

        return Count()


RECORDER: Recorder | None = None


def run_variant(
    variant: str,
    manifest: pd.DataFrame,
    root: Path,
    folder: Path,
    seed: int,
    epochs: int | None,
    semi: dict | None,
    scan_cache: Path | None,
    pretrain: dict | None = None,
) -> tuple[dict, object, Params, Workspace]:
    """validate -> preprocess -> balance -> train on `manifest` (written to root/manifest.csv), then test scores.

    Returns:
        (the record, the trained model, the resolved params, the workspace).
    """
    import keras

    global RECORDER
    RECORDER = RECORDER or Recorder()
    RECORDER.picks.clear()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest.to_csv(root / "manifest.csv", index=False)
    if scan_cache is not None and (scan_cache / "scan.csv").is_file():
        (folder / "out" / "cache").mkdir(parents=True)
        for f in ("scan.csv", "scan.salt"):
            if (scan_cache / f).is_file():
                shutil.copy2(scan_cache / f, folder / "out" / "cache" / f)
    raw = base_params(folder, seed, epochs, semi, pretrain)
    params, notes = autoparams.resolve(Params.model_validate(raw), root)
    ws = Workspace(base=folder, data_root=root, out=folder / "out")
    v = validate.run_step(params, ws)
    if not v.success:
        raise SystemExit(f"{variant}: validation failed\n{v.summary()}")
    t_valid = time.perf_counter() - wall0
    p = preprocess.run_step(params, ws, v)
    b = balance.run_step(params, ws, p)
    t_prep = time.perf_counter() - wall0 - t_valid
    r = train.run_step(params, ws, v, p, b, callbacks=(RECORDER.callback(),))
    model = keras.models.load_model(ws.base / r.model_path)
    test = Shards(p.folder, "test")
    proba = pipeline.model.predict_uint8(model, test.read())
    y, pred = test.labels, proba.argmax(axis=1)
    classes = p.classes
    record = {
        "variant": variant,
        "n_labelled_train": int(((manifest.split == "train") & (manifest.label != "")).sum()),
        "n_train_split": len(Shards(p.folder, "train")),
        "n_val": len(Shards(p.folder, "val")),
        "n_test": len(test),
        "roc_auc": round(macro_roc_auc(y, proba), 4),
        "accuracy": round(float(np.mean(pred == y)), 4),
        "balanced_accuracy": round(float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)])), 4),
        "epochs": r.epochs_run,
        "best_epoch": r.best_epoch,
        "epochs_per_phase": list(RECORDER.epochs),
        "colour": params.preprocess.color,
    }
    if semi or pretrain:
        record.update(pseudo_record(v, ws, classes))
    if pretrain:
        with np.load(ws.out / "train" / "encoder.npz", allow_pickle=False) as npz:
            about = json.loads(str(npz["about"]))
        record.update(
            pretrain_images=about["images"],
            pretrain_loss=[round(about["loss"][0], 4), round(about["loss"][-1], 4)],
            pretrain_knn_val=[round(about["knn"]["before"], 4), round(about["knn"]["after"], 4)],
        )
    record.update(
        cpu_min=round((cpu_seconds() - cpu0) / 60, 2),
        wall_s=round(time.perf_counter() - wall0, 1),
        validate_s=round(t_valid, 1),
        preprocess_s=round(t_prep, 1),
    )
    return record, model, params, ws


RUN_TRUTH: dict[str, str] = {}  # path -> true label of the dataset being run (the oracle)


def pseudo_record(v, ws: Workspace, classes: list[str]) -> dict:
    """The pool, the teacher's picks (semi.json) and how many of the pseudo-labels were right."""
    pool = pd.read_csv(v.pool_csv, dtype=str, keep_default_na=False)
    usable = pool.loc[pool["excluded"] == "", "path"].tolist()
    out = {"pool": len(pool), "pool_usable": len(usable)}
    out["pool_excluded"] = pool.loc[pool["excluded"] != "", "excluded"].str.split(":").str[0].value_counts().to_dict()
    semi, manifest_truth = ws.out / "train" / "semi.json", RUN_TRUTH
    if semi.is_file():
        rounds = json.loads(semi.read_text())["rounds"]
        first = rounds[0] if rounds else {}
        if "picked" in first:
            out.update(pseudo_picked=first["picked"], pseudo_per_class=first["per_class"])
            out["pseudo_mean_confidence"] = first["mean_confidence"]
        elif "sure" in first:  # consistency: how many pool images the student is sure of at the end
            out["pool_sure_after"] = [r["sure"] for r in rounds]
    if RECORDER is not None and RECORDER.picks:
        rounds = []
        for pick in RECORDER.picks:  # the first round's figures at the top level, every round's in pseudo_rounds
            truth = np.array([manifest_truth[usable[i]] for i in pick.positions])
            given = np.array([classes[k] for k in pick.labels])
            rounds.append(
                {
                    "picked": len(given),
                    "correct": int((truth == given).sum()),
                    "true_per_class": {c: int((truth == c).sum()) for c in classes},
                }
            )
        first = rounds[0]
        out["pseudo_correct"] = first["correct"]
        out["pseudo_correct_ratio"] = round(first["correct"] / first["picked"], 4) if first["picked"] else None
        out["pseudo_true_per_class"] = first["true_per_class"]
        out["pseudo_rounds"] = rounds
        out["pool_true_per_class"] = {c: int(sum(manifest_truth[u] == c for u in usable)) for c in classes}
    return out


def variant_manifest(truth: pd.DataFrame, labelled: pd.Index, keep_unlabelled: bool) -> pd.DataFrame:
    """Test rows and the labelled train rows; the other train rows with an empty label, or dropped."""
    train_rows = truth.split == "train"
    m = truth.copy()
    rest = train_rows & ~m.index.isin(labelled)
    if keep_unlabelled:
        m.loc[rest, "label"] = ""
        m.loc[rest, "split"] = ""  # an unlabelled image is in no split
        return m
    return m[~rest]


def goals(name: str, seed: int, rec: dict, log: Path) -> None:
    """The issue's goal figures for one dataset and seed, per semi variant, as far as the variants ran."""
    full, sup = rec.get("full"), rec.get("sup10")
    for variant in [*SEMI_VARIANTS, *PRETRAIN_VARIANTS]:
        semi = rec.get(variant)
        if not (full and semi):
            continue
        out = {"dataset": name, "seed": seed, "summary": "goals", "variant": variant}
        if name == "chest":
            out["minus_full_roc_auc"] = round(semi["roc_auc"] - full["roc_auc"], 4)
            out["goal_within_0.01_of_full_met"] = bool(full["roc_auc"] - semi["roc_auc"] <= 0.01)
            if sup:
                out["minus_sup10_roc_auc"] = round(semi["roc_auc"] - sup["roc_auc"], 4)
                out["goal_0.03_above_sup10_met"] = bool(semi["roc_auc"] - sup["roc_auc"] >= 0.03)
        else:
            out["minus_full_accuracy"] = round(semi["accuracy"] - full["accuracy"], 4)
            out["goal_within_0.03_of_full_met"] = bool(full["accuracy"] - semi["accuracy"] <= 0.03)
            if sup:
                out["minus_sup10_accuracy"] = round(semi["accuracy"] - sup["accuracy"], 4)
        out["over_full_cpu_ratio"] = round(semi["cpu_min"] / full["cpu_min"], 3)
        emit(out, log)


def labelling_loop(name, seed, truth, labelled, root, work, epochs, scan, log, strategies) -> None:
    """Rounds of rank -> oracle labels ROUND_SHARE of the original pool -> retrain, per strategy."""
    import keras

    from pipeline.label import suggest

    pool0 = truth.index[(truth.split == "train") & ~truth.index.isin(labelled)]
    k = round(ROUND_SHARE * len(pool0))
    start = work / "sup10"
    if not (start / "out" / "train" / "model.keras").is_file():
        raise SystemExit("the loop starts from sup10's model: run the variants part first")
    params0 = autoparams.resolve(Params.model_validate(base_params(start, seed, epochs, None)), root).params
    classes = list(params0.validate_.labels)  # sorted: the models' output order
    for strategy in strategies:
        model = keras.models.load_model(start / "out" / "train" / "model.keras")
        have, rng = pd.Index(labelled), np.random.default_rng(1000 + seed)
        for rnd in range(1, ROUNDS + 1):
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            remaining = pool0.difference(have)
            if strategy == "suggest":
                files = [root / truth.path[i] for i in remaining]
                near = params0.validate_.near_duplicates
                queue = suggest(model, classes, files, root, None, params0.preprocess, near)
                by_path = pd.Series(remaining, index=truth.path[remaining].to_numpy())
                picked = pd.Index(by_path[queue.path[queue.error == ""].head(k)].to_numpy())
            else:
                picked = pd.Index(rng.choice(remaining.to_numpy(), k, replace=False))
            rank_s, rank_cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
            have = have.union(picked)
            record, model, _, _ = run_variant(
                f"loop_{strategy}_round{rnd}",
                variant_manifest(truth, have, keep_unlabelled=False),
                root,
                work / f"loop_{strategy}" / f"round{rnd}",
                seed,
                epochs,
                None,
                scan,
            )
            picked_truth = truth.label[picked].value_counts().to_dict()
            record.update(
                dataset=name,
                seed=seed,
                strategy=strategy,
                round=rnd,
                oracle_labels=len(picked),
                picked_per_class=picked_truth,
                rank_s=round(rank_s, 1),
                rank_cpu_min=round(rank_cpu / 60, 2),
                cpu_min=round(record["cpu_min"] + rank_cpu / 60, 2),
            )
            emit(record, log)
            shutil.rmtree(work / f"loop_{strategy}" / f"round{rnd}" / "out" / "preprocess", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="chest,blood")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--parts", default="variants,loop", help="variants and/or loop")
    ap.add_argument(
        "--variants", default="full,sup10,semi10", help="of full,sup10,semi10,share10,cons10,pre10,precons10"
    )
    ap.add_argument("--share", type=float, default=0.2, help="share10's semi.share")
    ap.add_argument("--share-rounds", type=int, default=2, help="share10's semi.rounds")
    ap.add_argument("--cons-threshold", type=float, default=0.95, help="cons10's semi.threshold")
    ap.add_argument("--cons-mu", type=int, default=2, help="cons10's semi.mu")
    ap.add_argument("--cons-weight", type=float, default=1.0, help="cons10's semi.weight")
    ap.add_argument("--cons-align", action="store_true", help="cons10 with semi.align")
    ap.add_argument("--pre-epochs", type=int, default=50, help="pre10's and precons10's pretrain.epochs")
    ap.add_argument("--pre-temperature", type=float, default=0.2, help="pre10's and precons10's pretrain.temperature")
    ap.add_argument("--pre-batch", type=int, default=128, help="pre10's and precons10's pretrain.batch_size")
    ap.add_argument("--strategies", default="suggest,random")
    ap.add_argument("--loop-datasets", default="chest,blood", help="datasets the loop runs on")
    ap.add_argument("--loop-seeds", default="0")
    ap.add_argument("--shared", type=Path, default=Path("/work/shared/datasets"))
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/scarce"), help="image copies and runs")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: about this many train images")
    ap.add_argument("--epochs", type=int, default=None, help="smoke test: fewer epochs")
    ap.add_argument("--log", type=Path, default=None, help="also append the JSON lines here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    parts, variants = set(args.parts.split(",")), args.variants.split(",")
    emit({"summary": "start", "argv": {k: v if v is None else str(v) for k, v in vars(args).items()}}, args.log)
    for name in args.datasets.split(","):
        root = args.scratch / name / "data"
        root.mkdir(parents=True, exist_ok=True)
        copy_data(name, args.shared, root)
        truth = truth_manifest(name, args.shared, args.limit)
        RUN_TRUTH.clear()
        RUN_TRUTH.update(dict(zip(truth.path, truth.label)))
        scan = args.scratch / name / "scan_cache"
        scan = scan if (scan / "scan.csv").is_file() else None  # an earlier run's: no rescan
        for seed in seeds:
            work = args.scratch / name / ("smoke" if args.limit else "runs") / f"seed{seed}"
            labelled = stratified(truth[truth.split == "train"], LABELLED, seed)
            rec = {}
            if "variants" in parts:
                for variant in variants:
                    pretrain = None
                    if variant in PRETRAIN_VARIANTS:
                        pretrain = {
                            "epochs": args.pre_epochs,
                            "temperature": args.pre_temperature,
                            "batch_size": args.pre_batch,
                        }
                    semi_name = PRETRAIN_VARIANTS.get(variant, variant)
                    semi = SEMI_VARIANTS.get(semi_name) if semi_name else None
                    if semi and semi.get("criterion") == "class_share":
                        semi = {**semi, "share": args.share, "rounds": args.share_rounds}
                    if semi and semi["method"] == "consistency":
                        semi = {
                            **semi,
                            "threshold": args.cons_threshold,
                            "mu": args.cons_mu,
                            "weight": args.cons_weight,
                            "align": args.cons_align,
                        }
                    keep = bool(semi or pretrain)
                    m = variant_manifest(truth, truth.index if variant == "full" else labelled, keep)
                    record, _, _, ws = run_variant(
                        variant, m, root, work / variant, seed, args.epochs, semi, scan, pretrain
                    )
                    record.update(dataset=name, seed=seed, labels_ratio=LABELLED if variant != "full" else 1.0)
                    record.update(semi=semi) if semi else None
                    record.update(pretrain=pretrain) if pretrain else None
                    emit(record, args.log)
                    rec[variant] = record
                    if scan is None:
                        scan = args.scratch / name / "scan_cache"
                        scan.mkdir(parents=True, exist_ok=True)
                        for f in ("scan.csv", "scan.salt"):
                            if (ws.out / "cache" / f).is_file():
                                shutil.copy2(ws.out / "cache" / f, scan / f)
                    shutil.rmtree(ws.out / "preprocess", ignore_errors=True) if variant != "sup10" else None
                goals(name, seed, rec, args.log)
            if "loop" in parts and name in args.loop_datasets.split(",") and str(seed) in args.loop_seeds.split(","):
                labelling_loop(
                    name, seed, truth, labelled, root, work, args.epochs, scan, args.log, args.strategies.split(",")
                )


if __name__ == "__main__":
    main()
