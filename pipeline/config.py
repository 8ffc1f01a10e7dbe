"""params.yaml as a typed pydantic model: one section per step, unknown keys rejected."""

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
AUTO = "auto"  # validate.labels and preprocess.color: found in the data when a run opens it (pipeline.autoparams)


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    """Where the data set (images + manifest.csv) lives, relative to params.yaml."""

    root: Path = Path("data")


class NearDuplicateParams(Section):
    """Near-copies (re-exports, crops, brightness changes) by perceptual fingerprint (pipeline.near_duplicates)."""

    enabled: bool = True
    threshold: int = Field(20, ge=0, le=63)  # Hamming distance (of 256 bits) that makes a near copy
    action: Literal["error", "warning", "drop"] = "error"  # a group across fixed splits: stop, record, or drop
    windows: bool = True  # crops and shifts too: 20 corner and 20 edge windows per image (pipeline.near_duplicates)
    small_threshold: int = Field(36, ge=0, le=63)  # a pair with an image under 32 px a side (e.g. 28 px MedMNIST):
    # the hash has fewer real frequencies there, so copies lie farther apart; never tighter than threshold
    clean_threshold: int | None = Field(None, ge=0, le=63)  # evaluate: test images farther than this from train;
    # None: 1.5 x threshold (capped at 63)

    @model_validator(mode="after")
    def _clean_not_tighter(self) -> "NearDuplicateParams":
        if self.clean_threshold is not None and self.clean_threshold < self.threshold:
            raise ValueError(f"clean_threshold ({self.clean_threshold}) must be at least threshold ({self.threshold})")
        return self

    @property
    def clean(self) -> int:
        """The looser threshold for the clean test subset."""
        return self.clean_threshold if self.clean_threshold is not None else min(63, (self.threshold * 3) // 2)

    @property
    def small(self) -> int:
        """The threshold for a pair with an image under 32 px a side: small_threshold, never below threshold."""
        return max(self.threshold, self.small_threshold)

    @property
    def clean_small(self) -> int:
        """The clean subset's threshold for pairs with a small image: `small`, loosened as `clean` is."""
        return min(63, self.small + self.clean - self.threshold)


class ValidateParams(Section):
    """Data-validation thresholds."""

    labels: list[str] | Literal["auto"] = ["normal", "nodule", "effusion"]  # auto: the classes the data hold
    min_per_class: int = Field(5, ge=1)
    blank_std: float = Field(1.0, ge=0)  # intensity std (0-255 scale) below this is blank ...
    blank: Literal["error", "warning"] = "error"  # ... and stops the flow, or is only recorded
    blur_min: float = Field(1.0, ge=0)  # warn: variance of the Laplacian below this
    max_imbalance: float = Field(20.0, ge=1)  # warn: largest / smallest class above this
    exact_duplicates: Literal["error", "drop"] = "error"  # same bytes across fixed splits: stop, or drop val/test
    # copies
    near_duplicates: NearDuplicateParams = NearDuplicateParams()

    @property
    def classes(self) -> list[str]:
        """The class names, in class-index order.

        Raises:
            ConfigError: `labels` is still `auto` (pipeline.autoparams.resolve replaces it).
        """
        if self.labels == AUTO:
            raise ConfigError("validate.labels", "'auto' must be resolved from the data before use")
        return list(self.labels)


class SplitRatios(Section):
    """Fractions of patients per split."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitRatios":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split ratios must sum to 1")
        return self


class ClaheParams(Section):
    """Contrast-limited adaptive histogram equalisation, for low-contrast images."""

    enabled: bool = False
    clip_limit: float = Field(2.0, gt=0)
    tile_grid: int = Field(8, ge=1, le=64)


PIXEL_FIELDS = ("size", "color", "fit", "clahe", "denoise", "jpeg_reduced")  # what the model's input pixels depend on


class PreprocessParams(Section):
    """Image geometry, colour, quality fixes, normalisation; the patient-grouped split; the shard cache."""

    size: int = Field(64, ge=8, le=1024)
    color: Literal["gray", "rgb", "auto"] = "gray"  # auto: RGB when the images carry colour (params.yaml's choice)
    fit: Literal["pad", "crop", "stretch"] = "pad"  # keep aspect and pad, keep aspect and centre-crop, or squash
    clahe: ClaheParams = ClaheParams()
    denoise: Literal["none", "median", "bilateral", "nlmeans"] = "none"
    # A JPEG at least twice the size it is fitted to decodes at 1/2, 1/4 or 1/8 of its size inside libjpeg
    # (DCT scaling), never below that size, then resizes: several times faster, within ~0.5 grey levels.
    jpeg_reduced: bool = True
    normalize: Literal["unit", "zscore", "dataset"] = "unit"  # [0,1]; per image; train mean/std
    shard_size: int = Field(4096, ge=1)  # images per shard file
    workers: int = Field(0, ge=0)  # decoding threads; 0 = one per core
    # Bounded inputs, sized for medical images (mammograms are ~4k x 5k = 20 Mpx): larger images are
    # refused from their header before decoding (pipeline.limits). Not pixel-affecting: not in the cache key.
    max_pixels: int = Field(50_000_000, ge=1)  # width x height x frames x samples
    max_file_mb: int = Field(512, ge=1)  # file size, MB (2**20 bytes)
    split: SplitRatios = SplitRatios()
    seed: int = 42

    @property
    def channels(self) -> int:
        """Channels of the model input: 1 (gray) or 3 (RGB).

        Raises:
            ConfigError: `color` is still `auto` (pipeline.autoparams.resolve replaces it).
        """
        if self.color == AUTO:
            raise ConfigError("preprocess.color", "'auto' must be resolved from the data before use")
        return 1 if self.color == "gray" else 3


class AugmentParams(Section):
    """Random augmentation of training batches (seeded by (seed, epoch, batch): identical on a rerun)."""

    flip: bool = True  # horizontal flips
    rotation: float = Field(10.0, ge=0, le=180)  # degrees, +-
    shift: float = Field(0.05, ge=0, le=0.5)  # fraction of the side, +-
    zoom: float = Field(0.1, ge=0, lt=1)  # relative, +-
    brightness: float = Field(0.1, ge=0, le=1)  # added, +-
    contrast: float = Field(0.1, ge=0, lt=1)  # relative, +-
    noise: float = Field(0.0, ge=0, le=1)  # Gaussian sigma on the [0,1] scale


class BalanceParams(Section):
    """How class imbalance is countered, and how training images are augmented."""

    strategy: Literal["none", "class_weight", "oversample", "oversample+class_weight"] = "oversample"
    target_ratio: float = Field(1.0, gt=0, le=1)  # oversample minority classes to this share of the largest
    augment: AugmentParams = AugmentParams()
    augment_originals: bool = False  # augment every training image, not only the added copies
    seed: int = 42


class ModelParams(Section):
    """Which network to build."""

    name: Literal["seed_cnn", "resnet_small", "efficientnet_b0", "resnet50", "mobilenet_v3_small"] = "seed_cnn"
    # a medpipe encoder file (.npz, from `pretrain`, made by the same architecture at the same input size),
    # or for keras.applications a local weights file; never downloaded
    weights: Path | None = None
    dropout: float = Field(0.3, ge=0, lt=1)  # before the classifier (not in seed_cnn, kept exact)

    def weights_path(self, base: Path) -> Path | None:
        """The file `weights` names, resolved against the project folder.

        Args:
            base: The project folder.

        Returns:
            The path, or None when `weights` is not set.

        Raises:
            ConfigError: The file does not exist.
        """
        if self.weights is None:
            return None
        path = self.weights if self.weights.is_absolute() else base / self.weights
        if not path.is_file():
            raise ConfigError(path, "model.weights file not found (weights are never downloaded)")
        return path


class TrainParams(Section):
    """Optimiser, schedule, early stopping, checkpoints and accelerator settings."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_epochs: int = Field(10, ge=1)  # step schedule: multiply the rate by step_gamma every this
    # many epochs
    step_gamma: float = Field(0.1, gt=0, le=1)
    patience: int = Field(5, ge=1)
    min_epochs: int = Field(5, ge=0)
    seed: int = 42
    determinism: bool = True
    mixed_precision: Literal["auto", "on", "off"] = "auto"  # auto: mixed_float16 on GPUs that support it
    xla: bool = False  # jit-compile the train step
    memory_growth: bool = True  # GPUs: allocate memory as needed, not all at once
    in_memory_mb: int = Field(1024, ge=0)  # train split above this streams from its shards
    # The Keras backend: tensorflow (tf.data input) or jax (a PyDataset, no TensorFlow); auto: $KERAS_BACKEND
    # when set, else tensorflow (resolved before a run, so its params record the one used)
    backend: Literal["auto", "tensorflow", "jax"] = "auto"


class SemiParams(Section):
    """Learning from the unlabelled pool (validation's pool.csv: readable, no val/test patient, no near copy
    of a val/test image). Off by default; off, it adds nothing to the params' hash."""

    # none | pseudo_label: a teacher trained on the labelled images labels pool images, and a student, from
    # the same initial weights, trains on the labelled and the pseudo-labelled ones | consistency: a student
    # from the teacher's weights learns, besides the labelled images, to give a pool image's strong view the
    # class it gives its weak view where that is sure (>= threshold; FixMatch, Sohn et al. 2020)
    method: Literal["none", "pseudo_label", "consistency"] = "none"
    # Which pool images a teacher labels (as scikit-learn's SelfTrainingClassifier names it):
    # threshold: those whose top softmax probability >= threshold (a weak teacher is sure mostly of its easy
    # classes); class_share: in round k, the most confident share * k of the images it assigns to each class
    # (class-balanced self-training, Zou et al. 2018), whatever their probability
    criterion: Literal["threshold", "class_share"] = "threshold"
    threshold: float = Field(0.95, gt=0, le=1)
    share: float = Field(0.2, gt=0, le=1)
    rounds: int = Field(1, ge=1, le=5)  # teacher -> student rounds; each student teaches the next round
    # consistency only (left out of the hash otherwise):
    mu: int = Field(2, ge=1, le=16)  # pool images per labelled image in a batch (each seen weak and strong)
    weight: float = Field(1.0, ge=0)  # the pool term's weight in the loss (FixMatch's lambda_u)
    align: bool = False  # divide the weak views' probabilities by the batch's mean first (towards uniform classes)
    strong: AugmentParams = AugmentParams(
        rotation=30.0, shift=0.125, zoom=0.2, brightness=0.3, contrast=0.3, noise=0.05
    )


CONSISTENCY_ONLY = frozenset(
    {"mu", "weight", "align", "strong"}
)  # SemiParams fields only semi.method consistency reads


class PretrainParams(Section):
    """Self-supervised pre-training of the encoder on the train and pool images before supervised training
    (SimCLR, pipeline/pretrain.py). Off (0 epochs) by default; off, it adds nothing to the params' hash."""

    epochs: int = Field(0, ge=0)  # 0: off
    batch_size: int = Field(128, ge=2)  # images per batch (each seen in two views)
    learning_rate: float = Field(1e-3, gt=0)
    temperature: float = Field(0.2, gt=0)  # NT-Xent's softmax temperature
    projection: int = Field(64, ge=2)  # the projection head's output size (the head is dropped afterwards)
    augment: AugmentParams = AugmentParams(
        rotation=30.0, shift=0.2, zoom=0.3, brightness=0.4, contrast=0.4, noise=0.05
    )  # the two views' augmentation


class EvaluateParams(Section):
    """Evaluation settings."""

    ece_bins: int = Field(10, ge=2)
    bootstrap: int = Field(1000, ge=10)  # resamples for the 95% intervals
    seed: int = 42
    target_sensitivity: float | None = Field(None, gt=0, le=1)  # binary threshold; None: Youden's J
    cam_per_class: int = Field(2, ge=0)  # Grad-CAM overlays per class, correct and wrong
    subgroups: list[str] = []  # manifest.csv columns (e.g. sex, site) scored separately on the test split


class CardParams(Section):
    """The words of the model card (pipeline/card.py) that only its authors can write; they change no model."""

    intended_use: str = (
        "Research and development of image classifiers on the data set named below; assisting, never replacing, "
        "a qualified reader."
    )
    out_of_scope: str = (
        "Diagnosis or triage of patients without a clinician's review; images of another modality, body part, "
        "scanner or population than the training data; any use before validation on the intended site's data."
    )
    limitations: str = ""  # known limitations, in the authors' words (the card adds the ones it measures)


class Range(Section):
    """A numeric range of the recipe search: uniform, or log-uniform with `log`; whole numbers with `integer`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


TUNE_METRICS = {"val_roc_auc": "maximize", "val_accuracy": "maximize", "val_loss": "minimize"}


class TuneParams(Section):
    """`medpipe tune` (pipeline/tune.py): a search space over other params, a budget, a seed; selection on the
    validation split only. Not lineage of a model (a tuned recipe is recorded as the params it chose)."""

    trials: int | None = Field(20, ge=1)  # budget in finished trials (None: only the minutes count)
    minutes: float | None = Field(None, gt=0)  # budget in wall-clock minutes of this invocation
    seed: int = 0  # the sampler's (TPE) seed: the same seed and trials give the same trials
    metric: Literal["val_roc_auc", "val_accuracy", "val_loss"] = "val_roc_auc"  # at each trial's best epoch
    prune: bool = True  # stop a trial whose per-epoch metric trails the median of earlier trials
    parallel: int = Field(1, ge=1)  # trials trained at once; > 1 on Dask: the scheduler of `dask.address`
    # (or $MEDPIPE_DASK_ADDRESS), else a LocalCluster of this many processes. Seeded repeats need 1.
    # dotted params keys: a list of choices, or a Range {low, high, log, integer}
    space: dict[str, Range | list[Any]] = {
        "train.learning_rate": Range(low=3e-4, high=3e-3, log=True),
        "train.batch_size": [16, 32, 64],
    }

    @model_validator(mode="after")
    def _budget_and_space(self) -> "TuneParams":
        if self.trials is None and self.minutes is None:
            raise ValueError("give a budget: trials, minutes or both")
        if not self.space:
            raise ValueError("the search space is empty")
        for key, choices in self.space.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"space {key!r}: no choices")
        return self


class RegisterParams(Section):
    """Where models are tracked and registered."""

    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_root: Path = Path("mlflow/artifacts")
    experiment: str = "medpipe"
    model_name: str = "medpipe-classifier"


GATE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
    "sensitivity",
    "specificity",
    "log_loss",
    "brier",
    "ece",
)  # pipeline.metrics.classification_metrics
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})


class PromoteParams(Section):
    """Promotion gate: beat the champion on `metric` by `margin`, guards within tolerance; floors for a first model."""

    metric: str = "roc_auc"
    margin: float = Field(0.0, ge=0)
    guards: dict[str, float] = {"sensitivity": 0.05}
    floors: dict[str, float] = {"roc_auc": 0.6}

    @model_validator(mode="after")
    def _known_metrics(self) -> "PromoteParams":
        for key in [self.metric, *self.guards, *self.floors]:
            if key not in GATE_METRICS:
                raise ValueError(f"unknown metric {key!r}; the gate knows {', '.join(GATE_METRICS)}")
        return self


class DaskParams(Section):
    """Where the data steps (scan, preprocess) run: in this process (default), on a local Dask cluster,
    or on a running Dask scheduler. Execution only: the outputs are the same, so it is not lineage."""

    address: str | None = None  # tcp://host:8786 of a scheduler ($MEDPIPE_DASK_ADDRESS wins)
    workers: int = Field(0, ge=0)  # else a LocalCluster of this many processes on 127.0.0.1; 0 = no Dask
    chunk_size: int = Field(1024, ge=1)  # images per scan task (preprocess: one task per shard)


class Params(Section):
    """The whole params.yaml."""

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    balance: BalanceParams = BalanceParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    semi: SemiParams = SemiParams()
    pretrain: PretrainParams = PretrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    promote: PromoteParams = PromoteParams()
    card: CardParams = CardParams()
    tune: TuneParams = TuneParams()
    dask: DaskParams = DaskParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def md5(self) -> str:
        """Stable hash of the effective parameters (lineage tag `medpipe.params_md5`); where the data
        steps ran (`dask`), the model card's words (`card`) and the recipe search's settings (`tune`) change
        no model, so they are left out.

        `semi` and `pretrain` are left out while they are off, so the hash of a recipe without them is the
        one it had before they existed; semi's consistency-only fields are left out unless `semi.method` is
        consistency.

        Returns:
            The hex md5 of the params as sorted JSON (by alias), without `dask`, `card` and `tune`.
        """
        left_out: dict[str, Any] = {"dask": True, "card": True, "tune": True}
        if self.semi.method == "none":
            left_out["semi"] = True
        elif self.semi.method != "consistency":  # a pseudo-labelling recipe keeps the hash it had before them
            left_out["semi"] = dict.fromkeys(CONSISTENCY_ONLY, True)
        if not self.pretrain.epochs:
            left_out["pretrain"] = True
        text = json.dumps(self.model_dump(mode="json", by_alias=True, exclude=left_out), sort_keys=True)
        return hashlib.md5(text.encode()).hexdigest()


class UndeclaredParams(LookupError):
    """A step read a params key that its declaration (pipeline/steps.py) does not list: its DVC stage
    would not rerun when that key changes."""


class _SectionView:
    """One params section as a step sees it: its declared fields; any other field raises UndeclaredParams.
    Properties are evaluated against the view (so the fields they read are checked too); methods (e.g.
    model_dump) are the section's own."""

    def __init__(self, section: Section, fields: frozenset[str], where: str) -> None:
        self._section, self._fields, self._where = section, fields, where

    def __reduce__(self) -> tuple:  # pickled whole for a Dask worker or a process pool
        return _SectionView, (self._section, self._fields, self._where)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and inspect probe these: not params
        section = self.__dict__["_section"]
        if name in type(section).model_fields:
            if name not in self._fields:
                raise UndeclaredParams(f"{self._where}.{name}")
            return getattr(section, name)
        attribute = getattr(type(section), name, None)
        if isinstance(attribute, property) and attribute.fget is not None:
            return attribute.fget(self)
        return getattr(section, name)


class _ParamsView:
    """The params as one step sees them (see `step_params`)."""

    def __init__(self, params: Params, keys: tuple[str, ...], step: str) -> None:
        sections: dict[str, set[str] | None] = {}
        for key in keys:
            name, _, field = key.partition(".")
            fields = sections.setdefault(name, set())
            if not field:
                sections[name] = None  # the whole section
            elif fields is not None:
                fields.add(field.split(".")[0])
        self._params, self._keys, self._sections, self._step = params, keys, sections, step

    def __reduce__(self) -> tuple:  # pickled whole for a Dask worker or a process pool
        return _ParamsView, (self._params, self._keys, self._step)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        params = self.__dict__["_params"]
        info = type(params).model_fields.get(name)
        if info is None:
            return getattr(params, name)  # md5(), model_dump(): the run's lineage (hashed and logged whole)
        key = info.alias or name
        if key not in self._sections:
            raise UndeclaredParams(f"step {self._step!r} reads params {key!r}, which it does not declare")
        fields, section = self._sections[key], getattr(params, name)
        if fields is None:
            return section
        return _SectionView(section, frozenset(fields), f"step {self._step!r} reads params {key}")


def step_params(params: Params, keys: tuple[str, ...], step: str) -> Params:
    """The params one step receives: the sections and keys it declares (`Step.params`), as in its DVC stage.

    Reading any other section or key raises UndeclaredParams, so a declaration, and the DVC `params` made
    from it, cannot miss what the step reads. `md5()` and `model_dump()` stay those of the whole params: a
    training run logs and hashes them all as its lineage, and reads only its own.

    Args:
        params: The run's params.
        keys: Sections (`train`) and dotted keys (`preprocess.normalize`) the step reads.
        step: The step's name (for the error).

    Returns:
        A read-only view typed as Params.
    """
    return cast(Params, _ParamsView(params, keys, step))


def _error_key(err: ValidationError) -> str:
    """The dotted key (aliases, no trailing underscore) of the first validation error."""
    return ".".join(str(p).rstrip("_") for p in err.errors()[0]["loc"])


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = _error_key(err)
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"invalid value for '{key}': {first['msg']}"


def _blame(key: str, source: str | Path, overrides: list[str]) -> str | Path:
    """`--set KEY` when an override set `key` (or a section above or below it), else `source`."""
    for name in reversed(overrides):
        if name == key or name.startswith(f"{key}.") or key.startswith(f"{name}."):
            return f"--set {name}"
    return source


def parse_params(raw: dict, source: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Params:
    """Build Params from a dict, raising ConfigError that names the offending key.

    Args:
        raw: the parsed params.yaml, overrides already applied.
        source: the file blamed for an error.
        overrides: dotted keys set with --set; an error on one of them blames `--set KEY` instead.

    Returns:
        The validated params.

    Raises:
        ConfigError: an unknown key or an invalid value (the first one).
    """
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_blame(_error_key(err), source, overrides or []), _describe(err)) from None


def load_params(path: Path = DEFAULT_PARAMS, overrides: dict[str, str] | None = None) -> Params:
    """Read params.yaml and apply dotted-key overrides such as {"train.epochs": "3"}.

    Args:
        path: The params file.
        overrides: Dotted keys to YAML values (`--set KEY=VALUE`); `*.labels` also takes `a,b,c`
            (and `auto`, the data's classes).

    Returns:
        The validated params.

    Raises:
        ConfigError: the file is missing or invalid (blamed on the file), or an override is (blamed on
            `--set KEY`: an empty key part, a value that is not YAML, a key below a plain value).
    """
    if not path.is_file():
        raise ConfigError(
            path,
            f"parameter file not found (looked in {path.resolve().parent}; run medpipe in the "
            f"project folder or pass the file with -p/--params)",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(path, f"not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "top level must be a mapping of step sections")
    for key, value in (overrides or {}).items():
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}", f"value {value!r} is not valid YAML ({err.__class__.__name__})") from None
        if key.endswith(".labels") and isinstance(parsed, str) and parsed != AUTO:
            parsed = [part.strip() for part in parsed.split(",") if part.strip()]  # --set validate.labels=a,b
        _set_dotted(raw, key, parsed)
    return parse_params(raw, path, list(overrides or {}))


def _set_dotted(raw: dict, key: str, value: object) -> None:
    """Set raw["a"]["b"]["c"] = value for key "a.b.c", creating missing sections.

    Raises:
        ConfigError: a part of the key is empty, or a part above the leaf already holds a plain value.
    """
    parts = key.split(".")
    if not all(part.strip() for part in parts):
        raise ConfigError(f"--set {key}", "empty part in the dotted key")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # missing, or an empty section in params.yaml
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            above = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {key}", f"'{above}' is a value ({node!r}), not a section with keys")
    node[parts[-1]] = value


class Workspace(BaseModel):
    """Where a run reads its data and writes its step outputs (all DVC-tracked paths)."""

    model_config = ConfigDict(frozen=True)

    base: Path
    data_root: Path
    out: Path

    @classmethod
    def create(cls, params: Params, params_file: Path, data: Path | None = None) -> "Workspace":
        """Resolve data and output folders against the folder holding params.yaml.

        Args:
            params: The params (data.root).
            params_file: The params file; its folder is the project's base.
            data: A data folder that replaces data.root (e.g. `--data`); None: data.root.

        Returns:
            The workspace (outputs under `<base>/outputs`).
        """
        base = params_file.resolve().parent
        root = data.resolve() if data is not None else (base / params.data.root).resolve()
        return cls(base=base, data_root=root, out=base / "outputs")

    def step_dir(self, step: str) -> Path:
        """Output folder of one step, created on demand.

        Args:
            step: The step's name (e.g. `evaluate`).

        Returns:
            `<out>/<step>`, existing.
        """
        path = self.out / step
        path.mkdir(parents=True, exist_ok=True)
        return path
