"""`medpipe predict`, `explain`, `label suggest` and `label import`: what a registered model says about images,
and the experts' answers."""

from pathlib import Path
from typing import Annotated

import typer

from cli.common import ModelOpt, ParamsOpt, console
from pipeline.errors import MedpipeError


def explain(
    image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG or DICOM).")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Where to write the Grad-CAM picture.")] = Path("cam.png"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Explain one prediction: the class probabilities, and a Grad-CAM overlay of where they came from."""
    import json

    import cv2

    from pipeline.config import load_params
    from pipeline.explain import captioned, grad_cam, overlay
    from pipeline.model import input_params
    from pipeline.preprocess import load_image
    from pipeline.registry import load_registered, model_uri

    p = load_params(params)
    net, classes, version = load_registered(model or model_uri(p.register_), p.register_, params.resolve().parent)
    x = load_image(image, input_params(net, p.preprocess))
    cam, proba = grad_cam(net, x)
    names = classes
    top = int(proba.argmax())
    cv2.imwrite(str(out), captioned(overlay(x, cam), [image.name, f"predicted: {names[top]} (p = {proba[top]:.2f})"]))
    print(
        json.dumps(
            {
                "model": model or model_uri(p.register_),
                "version": version,
                "predictions": [
                    {
                        "image": str(image),
                        "label": names[int(proba.argmax())],
                        "probabilities": {n: round(float(v), 4) for n, v in zip(names, proba)},
                        "explanation": str(out),
                    }
                ],
            },
            indent=2,
        )
    )  # the same shape as `medpipe predict`


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG or DICOM).")],
    model: ModelOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Classify images with a registered model; print JSON: label and class probabilities per image."""
    import json

    from pipeline.config import load_params
    from pipeline.registry import load_classifier, model_uri
    from pipeline.serving import predict_files

    p = load_params(params)
    model = model or model_uri(p.register_)
    classifier, version = load_classifier(model, p.register_, params.resolve().parent, p.preprocess)
    rows = predict_files(classifier, images)
    print(json.dumps({"model": model, "version": version, "predictions": rows}, indent=2))


def label_suggest(
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of images to rank (searched recursively; default: the data set's unlabelled ones)."),
    ] = None,
    data: Annotated[
        Path, typer.Option(help="Data root whose unlabelled images (empty label, or unlabelled/) are ranked.")
    ] = Path("data"),
    model: Annotated[
        str | None, typer.Option(help="Registered model URI (default: register.model_name@champion).")
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV to write; Grad-CAM thumbnails go beside it.")] = Path(
        "outputs/label_suggestions.csv"
    ),
    thumbnails: Annotated[
        int, typer.Option(min=0, help="Grad-CAM thumbnails for this many images at the head of the queue (0: none).")
    ] = 200,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Rank images for review: suggested label, least certain first, near copies spread out, Grad-CAMs.

    Fill in the CSV's `label` column, then `medpipe label import` it.
    """
    from pipeline.config import load_params
    from pipeline.label import image_files, suggest, unlabelled_files
    from pipeline.registry import load_registered, model_uri

    root = images if images is not None else data
    if images is not None:
        files = image_files(images) if images.is_dir() else []
    else:
        files = unlabelled_files(data)
    if not files:
        raise MedpipeError(root, "no unlabelled images" if images is None else "no PNG, JPEG or DICOM images found")
    p = load_params(params)
    near = p.validate_.near_duplicates
    net, classes, version = load_registered(model or model_uri(p.register_), p.register_, params.resolve().parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    thumbs = out.with_name(out.stem + "_gradcam") if thumbnails else None
    table = suggest(net, classes, files, root, thumbs, p.preprocess, near if near.enabled else None, thumbnails)
    table.to_csv(out, index=False, float_format="%.4f")
    console.print(f"{len(table)} images, model version {version}; review queue (least certain first): {out}")


def label_import(
    reviewed: Annotated[Path, typer.Argument(help="The review queue with its `label` column filled in (CSV).")],
    data: Annotated[Path, typer.Option(help="Data root the paths are relative to.")] = Path("data"),
    reviewer: Annotated[
        str | None, typer.Option(help="Who reviewed, for rows without a reviewed_by column (default: $USER).")
    ] = None,
    dvc: Annotated[
        bool,
        typer.Option("--dvc/--no-dvc", help="Version the data with DVC (`dvc add`) when DATA.dvc exists."),
    ] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Merge reviewed labels into the data's manifest.csv, with provenance; then version the data.

    Each row's image gets label_source expert, reviewed_by and reviewed_at. Unknown labels, paths outside the
    data root, paths listed twice and changed labels are refused, and then nothing is written.
    """
    import getpass
    from datetime import UTC, datetime

    from cli.data import data_add
    from pipeline.config import AUTO, load_params
    from pipeline.data import discover
    from pipeline.label import import_labels

    p = load_params(params)
    labels = p.validate_.labels
    classes = discover(data).classes if labels == AUTO else list(labels)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    merged = import_labels(reviewed, data, classes, reviewer or getpass.getuser(), when)
    console.print(
        f"{merged.labelled} image(s) labelled, {merged.confirmed} label(s) confirmed from {reviewed}; "
        f"{int((merged.manifest['label'] == '').sum())} still unlabelled",
        soft_wrap=True,
        markup=False,
    )
    if not (merged.labelled or merged.confirmed):
        return
    if dvc and Path(f"{data}.dvc").is_file():
        data_add(data)
    else:
        console.print(f"version it: medpipe data add {data}", soft_wrap=True, markup=False)
