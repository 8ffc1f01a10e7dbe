"""`medpipe predict`, `explain` and `label suggest`: what a registered model says about images."""

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
    images: Annotated[Path, typer.Option(help="Folder of unlabelled images (searched recursively).")],
    model: Annotated[
        str | None, typer.Option(help="Registered model URI (default: register.model_name@champion).")
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV to write; Grad-CAM thumbnails go beside it.")] = Path(
        "outputs/label_suggestions.csv"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Suggest labels: predicted label, confidence and entropy per image, least certain first, with Grad-CAMs."""
    from pipeline.config import load_params
    from pipeline.label import image_files, suggest
    from pipeline.registry import load_registered, model_uri

    files = image_files(images) if images.is_dir() else []
    if not files:
        raise MedpipeError(images, "no PNG, JPEG or DICOM images found")
    p = load_params(params)
    net, classes, version = load_registered(model or model_uri(p.register_), p.register_, params.resolve().parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = suggest(net, classes, files, images, out.with_name(out.stem + "_gradcam"), p.preprocess)
    table.to_csv(out, index=False, float_format="%.4f")
    console.print(f"{len(table)} images, model version {version}; review queue (least certain first): {out}")
