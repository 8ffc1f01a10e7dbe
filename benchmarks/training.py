"""Training throughput: medpipe's tf.data input pipeline vs plain `model.fit` on numpy arrays, same model.

Same model, data, batch size and determinism setting on both sides; epoch times after the first
(tracing) epoch, alternating sides, best of `--repeats`. Also reports the fraction of the CPU's peak
FLOP/s reached, against both a measured peak (a large float32 matmul in TF) and the nominal one
(cores x clock x 32 FP32 FLOP per cycle for AVX2/AVX-512 FMA), and medpipe with augmentation on.

Prints one JSON object per line (see docs/benchmarks.md).
The JSON also states TensorFlow's intra-/inter-op thread settings (0: TensorFlow picks, all cores).
Usage: python benchmarks/training.py [--images 20000] [--size 28] [--batch 128] [--epochs 4] [--model seed_cnn]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config import AugmentParams, ModelParams, TrainParams
from pipeline.model import build_model
from pipeline.shards import Shards
from pipeline.train import configure_determinism, train_dataset


def write_shards(folder: Path, x: np.ndarray, y: np.ndarray) -> Shards:
    """A preprocess output folder holding one train split (the layout pipeline.preprocess writes)."""
    np.save(folder / "x_train_00000.npy", x)
    np.save(folder / "y_train.npy", y)
    meta = {
        "size": x.shape[1],
        "channels": x.shape[3],
        "classes": ["a", "b"],
        "splits": {"train": {"n": len(x), "shards": ["x_train_00000.npy"], "labels": "y_train.npy"}},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return Shards(folder, "train")


def train_flop_per_image(model) -> float:
    """Forward FLOPs of the conv and dense layers (2 per multiply-add), times 3 for forward + backward."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c = layer.output.shape
            total += 2 * h * w * c * int(np.prod(layer.kernel.shape[:3]))
        elif kind == "Dense":
            total += 2 * int(np.prod(layer.kernel.shape))
    return 3.0 * total


def measured_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matmul in TF on this CPU (a practical peak)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    tf.linalg.matmul(a, a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.linalg.matmul(a, a).numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def nominal_peak_flops() -> float:
    """Cores x clock x 32 FP32 FLOP/cycle (two 256-bit FMA pipes; AVX-512 on Zen 4 is double-pumped)."""
    mhz = [
        float(line.split(":")[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("cpu MHz")
    ]
    return (os.cpu_count() or 1) * (max(mhz) if mhz else 0.0) * 1e6 * 32


def epoch_seconds(fit) -> list[float]:
    """Run `fit(callback)`, return each epoch's wall time."""
    import keras

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    fit(Clock())
    return times


def fresh_model(size: int, name: str = "seed_cnn"):
    import keras

    configure_determinism(0, True)
    model = build_model(ModelParams(name=name), (size, size, 1), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="seed_cnn", choices=ModelParams.model_fields["name"].annotation.__args__)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 1), dtype=np.uint8)
    y = rng.integers(0, 2, args.images)
    x_float, y_onehot = x.astype(np.float32) / 255.0, np.eye(2, dtype=np.float32)[y]
    tp = TrainParams(batch_size=args.batch, epochs=args.epochs)
    plain, augmented = AugmentParams(flip=False, rotation=0, shift=0, zoom=0, brightness=0, contrast=0), AugmentParams()
    best = {"numpy": np.inf, "medpipe": np.inf, "medpipe_augmented": np.inf}
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), x, y)
        plans = {
            "medpipe": (np.arange(len(x)), np.zeros(len(x), bool)),
            "medpipe_augmented": (np.arange(len(x)), np.ones(len(x), bool)),
        }
        for _ in range(args.repeats):
            model = fresh_model(args.size, args.model)
            t = epoch_seconds(
                lambda cb: model.fit(
                    x_float,
                    y_onehot,
                    batch_size=args.batch,
                    epochs=args.epochs,
                    shuffle=True,
                    verbose=0,
                    callbacks=[cb],
                )
            )
            best["numpy"] = min(best["numpy"], float(np.median(t[1:])))
            for side, ap in (("medpipe", plain), ("medpipe_augmented", augmented)):
                model = fresh_model(args.size, args.model)
                data, steps = train_dataset(shards, plans[side], 2, tp, ap)
                t = epoch_seconds(
                    lambda cb: model.fit(
                        data, epochs=args.epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[cb]
                    )
                )
                best[side] = min(best[side], float(np.median(t[1:])))
    rate = {k: args.images / v for k, v in best.items()}
    flop = train_flop_per_image(fresh_model(args.size, args.model))
    import tensorflow as tf

    threads = tf.config.threading
    measured, nominal = measured_peak_flops(), nominal_peak_flops()
    print(
        json.dumps(
            {
                "bench": "training",
                "model": args.model,
                "images": args.images,
                "size_px": args.size,
                "batch": args.batch,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "intra_op_threads": threads.get_intra_op_parallelism_threads(),
                "inter_op_threads": threads.get_inter_op_parallelism_threads(),
                "medpipe_img_per_s": round(rate["medpipe"], 1),
                "numpy_fit_img_per_s": round(rate["numpy"], 1),
                "throughput_ratio": round(rate["medpipe"] / rate["numpy"], 3),
                "medpipe_augmented_img_per_s": round(rate["medpipe_augmented"], 1),
                "train_mflop_per_image": round(flop / 1e6, 2),
                "achieved_gflop_per_s": round(rate["medpipe"] * flop / 1e9, 1),
                "measured_peak_gflop_per_s": round(measured / 1e9, 1),
                "nominal_peak_gflop_per_s": round(nominal / 1e9, 1),
                "fraction_of_measured_peak": round(rate["medpipe"] * flop / measured, 3),
                "fraction_of_nominal_peak": round(rate["medpipe"] * flop / nominal, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
