from pipeline.model import build_model


def test_seed_cnn_is_the_seed_architecture():
    model = build_model("seed_cnn", (28, 28, 1), 3)
    kinds = [(type(layer).__name__, getattr(layer, "filters", None) or getattr(layer, "units", None))
             for layer in model.layers]
    assert kinds == [("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
                     ("Flatten", None), ("Dense", 128), ("Dense", 3)]
    assert model.layers[0].kernel_size == (3, 3) and model.layers[-1].activation.__name__ == "softmax"
    assert model.output_shape == (None, 3)
