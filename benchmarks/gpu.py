"""Training throughput on one backend, three sides in one run: medpipe's training step, plain `model.fit`, plain
PyTorch. Written for a GPU machine (CUDA, JAX, PyTorch; no TensorFlow, no network), and runs unchanged on CPU.

- medpipe: pipeline.train's new_model (Keras, the params' precision policy) fed by medpipe's input pipeline
  (pipeline.feed on JAX, tf.data on TensorFlow) from uint8 arrays, class-balancing augmentation on every image.
- medpipe_plain: the same without augmentation (the bar: ≥ 1.0x fit on CPU).
- fit: the same model, `model.fit` on float32 arrays already in memory, no augmentation.
- torch: the same architecture in plain PyTorch (seed CNN and resnet_small ported here, EfficientNet-B0 from
  torchvision), eager, channels-last, the batch already on the device, Adam; autocast for mixed precision.

Only Keras, namex, optree, pydantic, PyYAML, OpenCV and NumPy are needed beside the backend: no Prefect,
MLflow, DVC or Great Expectations is imported (they are blocked here, so a stray import fails loudly).
Random data of the right shape; img/s over the epochs after the first (compilation), best of --repeats.

Prints one JSON object per line (see docs/benchmarks.md).
Usage: python benchmarks/gpu.py [--backend jax] [--cases seed_cnn:64,resnet_small:128,efficientnet_b0:224]
       [--images 4096] [--batch 128] [--epochs 3] [--precision fp32,mixed] [--sides medpipe,medpipe_plain,fit,torch]
"""

import importlib.abc
import sys

BLOCKED = {"prefect", "mlflow", "dvc", "great_expectations"}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"benchmarks/gpu.py must not import {name!r}")


sys.meta_path.insert(0, _Block())

from pipeline import configure_offline

configure_offline()

import argparse
import json
import os
import platform
import time

import numpy as np

from pipeline.backend import select
from pipeline.config import AugmentParams, Params
from pipeline.shards import ArrayShards


def keras_rate(params: Params, size: int, x: np.ndarray, y: np.ndarray, side: str) -> float:
    """Images per second of one Keras side (medpipe or fit), epochs after the first."""
    import keras

    from benchmarks.training import epoch_seconds  # after select: it imports Keras
    from pipeline.feed import train_feed
    from pipeline.train import configure_determinism, configure_devices, new_model

    keras.backend.clear_session()
    scope, _ = configure_devices(params.train)
    configure_determinism(params.train.seed, params.train.determinism)
    meta = {"size": size, "channels": x.shape[3], "classes": ["a", "b"], "mean": 0.5, "std": 0.25}
    steps = -(-len(x) // params.train.batch_size)
    with scope:
        model = new_model(params, meta, None, steps)
    epochs, batch = params.train.epochs, params.train.batch_size
    if side == "fit":
        x_float, y_onehot = x.astype(np.float32) / 255.0, np.eye(2, dtype=np.float32)[y]
        fit = lambda cb: model.fit(x_float, y_onehot, batch_size=batch, epochs=epochs, verbose=0, callbacks=[cb])  # noqa: E731
    else:
        plan = (np.arange(len(x)), np.full(len(x), side == "medpipe"))  # medpipe: every image augmented
        if keras.backend.backend() == "tensorflow":
            from pipeline.train import train_dataset

            data, steps = train_dataset(ArrayShards(x, y), plan, 2, params.train, params.balance.augment)
        else:
            data, steps = train_feed(ArrayShards(x, y), plan, 2, params.train, params.balance.augment)
        fit = lambda cb: model.fit(  # noqa: E731
            data, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[cb]
        )
    return len(x) / float(np.median(epoch_seconds(fit)[1:]))


def torch_model(name: str, channels: int):
    """The architecture in plain PyTorch (None where it is not ported)."""
    import torch
    from torch import nn

    if name == "seed_cnn":
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.LazyLinear(128), nn.ReLU(), nn.Linear(128, 2),
        )  # fmt: skip
    if name == "resnet_small":

        class Residual(nn.Module):
            def __init__(self, cin: int, cout: int, stride: int) -> None:
                super().__init__()
                self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
                self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
                self.short = (
                    nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                    if stride != 1 or cin != cout
                    else nn.Identity()
                )

            def forward(self, x):
                return torch.relu(self.b(self.a(x)) + self.short(x))

        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            Residual(32, 32, 1), Residual(32, 64, 2), Residual(64, 128, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 2),
        )  # fmt: skip
    if name == "efficientnet_b0":
        try:
            import torchvision
        except ImportError:  # PyTorch without torchvision: no reference model
            return None

        model = torchvision.models.efficientnet_b0(weights=None, num_classes=2)
        if channels != 3:
            first = model.features[0][0]
            model.features[0][0] = nn.Conv2d(channels, first.out_channels, 3, 2, 1, bias=False)
        return model
    return None


def torch_rate(name: str, x: np.ndarray, y: np.ndarray, batch: int, epochs: int, mixed: bool) -> float | None:
    """Images per second of the plain PyTorch side (None when the model is not ported)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch_model(name, x.shape[3])
    if model is None:
        return None
    model = model.to(device).to(memory_format=torch.channels_last)
    data = (
        torch.from_numpy(x)
        .to(device)
        .permute(0, 3, 1, 2)
        .float()
        .div(255)
        .contiguous(memory_format=torch.channels_last)
    )
    labels = torch.from_numpy(y).to(device)
    model(data[:2])  # materialise lazy layers before the optimiser sees them
    optimiser, loss = torch.optim.Adam(model.parameters(), 1e-3), torch.nn.CrossEntropyLoss()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(data), batch):
            with torch.autocast(device.type, dtype=dtype, enabled=mixed):
                out = loss(model(data[i : i + batch]), labels[i : i + batch])
            optimiser.zero_grad(set_to_none=True)
            out.backward()
            optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(x) / float(np.median(times[1:]))


def device_name(backend: str) -> str:
    """The accelerator's name, or the CPU's."""
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"), choices=("jax", "tensorflow"))
    parser.add_argument("--cases", default="seed_cnn:64,resnet_small:128,efficientnet_b0:224")
    parser.add_argument("--images", type=int, default=4096, help="per case (a multiple of --batch is best)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="the first is not timed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", default="fp32,mixed")
    parser.add_argument("--sides", default="medpipe,medpipe_plain,fit,torch")
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    select(args.backend)
    sides = args.sides.split(",")
    try:
        import torch  # noqa: F401
    except ImportError:
        sides = [s for s in sides if s != "torch"]
        print(json.dumps({"bench": "gpu", "note": "no PyTorch here: torch side skipped"}), flush=True)
    rng = np.random.default_rng(0)
    for case in args.cases.split(","):
        name, size = case.split(":")[0], int(case.split(":")[1])
        x = rng.integers(0, 256, (args.images, size, size, args.channels), dtype=np.uint8)
        y = rng.integers(0, 2, args.images)
        for precision in args.precision.split(","):
            mixed = precision == "mixed"
            params = Params.model_validate(
                {
                    "model": {"name": name},
                    "train": {"batch_size": args.batch, "epochs": args.epochs,
                              "mixed_precision": "on" if mixed else "off"},
                    "balance": {"augment": AugmentParams().model_dump()},
                    "preprocess": {"normalize": "dataset"},
                }
            )  # fmt: skip
            for side in sides:
                best = None
                for _ in range(args.repeats):
                    rate = (
                        torch_rate(name, x, y, args.batch, args.epochs, mixed)
                        if side == "torch"
                        else keras_rate(params, size, x, y, side)
                    )
                    best = rate if best is None or (rate is not None and rate > best) else best
                print(
                    json.dumps(
                        {
                            "bench": "gpu",
                            "backend": args.backend if side != "torch" else "torch",
                            "device": device_name(args.backend),
                            "model": name,
                            "size_px": size,
                            "precision": precision,
                            "side": side,
                            "images": args.images,
                            "batch": args.batch,
                            "img_per_s": None if best is None else round(best, 1),
                            "augmented": side == "medpipe",
                            "cpus": os.cpu_count(),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
