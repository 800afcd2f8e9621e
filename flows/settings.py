"""One validated settings object: defaults < ``params.yaml`` < ``BELIEFLOOP_*`` environment < CLI flags.

The same ``params.yaml`` drives DVC (``dvc exp run -S acquisition.name=random``) and the CLI. Unknown keys are
rejected with a message naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ACQUISITION_NAMES = (
    "bald",
    "batchbald",
    "entropy",
    "epig",
    "expected_entropy",
    "least_confidence",
    "margin",
    "mean_std",
    "powerbald",
    "predictive_entropy",
    "random",
    "variation_ratios",
)
"""The ``acquisition`` package's public names, spelled out so that reading settings (every CLI command) does not
import torch (~2.5 s here); ``tests/flows/test_settings.py`` holds them equal to the package's registry."""

_params_file: ContextVar[Path | None] = ContextVar("beliefloop_params_file", default=None)

NAME_MAX = 100
_SAFE_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the key and the source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSettings(_Section):
    name: str = "digits"
    """A bundled scikit-learn set (digits, breast_cancer, wine, iris), a path to .npz / .csv / .parquet, or a folder
    of images (class folders hold labelled images, the folder itself unlabelled ones; optional train/ and test/)."""
    label_column: str | None = None
    """CSV/Parquet: the column holding labels (blank = unknown)."""
    id_column: str | None = None
    """CSV/Parquet: a column of stable item ids (default: ``row-<i>``)."""
    text_column: str | None = None
    """CSV/Parquet: a column of free text, shown to people as text and turned into ``text_dim`` features for the
    models by a stateless hashing + seeded random projection pipeline (``data.text``); other numeric columns are
    kept beside them. An empty cell is the empty text."""
    text_dim: int = Field(256, ge=1, le=4096)
    """Number of features the text column becomes (fixed when the dataset is first imported)."""
    classes: list[str] | None = None
    """Every class of the campaign, in this order, when the labelled rows do not show them all yet (a class none
    of them has can then be answered); ``null``: the dataset's own list (``.npz`` ``classes``, a bundled set's
    names) or its distinct labels."""
    test_fraction: float = Field(0.25, ge=0, lt=1)
    """Share of each class's labelled rows held out as the test set when the file gives no ``split`` column (a
    ``split`` column of ``train`` / ``test`` decides instead); 0 holds out none: rounds then report no test
    metrics until test rows arrive (``beliefloop ingest``)."""
    image_size: tuple[int, int] | None = None
    """Folders of images: resize every image to ``[height, width]`` (or ``N`` for N × N, ``"48x64"``) when they
    are imported; ``null``: they must all have one size. Images ingested later take the campaign's size."""

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, size: Any) -> Any:
        """``64`` and ``"64"`` are 64 × 64, ``"48x64"`` 48 high and 64 wide; each side at least 8 pixels."""
        if isinstance(size, str):
            parts = size.lower().replace("×", "x").split("x")
            try:
                size = [int(part) for part in parts]
            except ValueError:
                raise ValueError(f"image_size must be N or HEIGHTxWIDTH (e.g. 64 or 48x64), got {size!r}") from None
        if isinstance(size, int) or (isinstance(size, list) and len(size) == 1):
            size = [size, size] if isinstance(size, int) else size * 2
        whole = isinstance(size, list | tuple) and all(isinstance(side, int) for side in size)
        if whole and (len(size) != 2 or min(size) < 8):
            raise ValueError(f"image_size must be two sides of at least 8 pixels (height, width), got {size!r}")
        return size

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str] | None) -> list[str] | None:
        if classes is None:
            return None
        names = [c.strip() for c in classes]
        if not names or "" in names:
            raise ValueError(f"classes must be non-empty names, got {classes}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"classes must be distinct; repeated: {repeated}")
        return names


def dataset_slug(dataset: str) -> str:
    """The stem of a dataset name or path as a safe name: other characters become ``_``, leading dots go."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(dataset).stem).lstrip(".")[: NAME_MAX // 2] or "dataset"


class CampaignSettings(_Section):
    name: str | None = None
    """Campaign (= MLflow experiment, and a folder name in the workspace); derived from dataset, acquisition and
    seed when not given. Letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``, at most 100."""
    rounds: int = Field(10, ge=1)
    k: int = Field(10, ge=1)
    initial: int = Field(20, ge=0)
    """Size of the class-balanced labeled seed set of a simulated campaign."""
    min_labels: int = Field(20, ge=1)
    """A live round queues a seeded random batch until this many labels exist."""
    min_test: int = Field(30, ge=0)
    """A round warns when its test metrics stand on fewer test items than this."""
    seed: int = Field(0, ge=0, lt=2**32)
    """Non-negative (numpy's generators refuse negative seeds) and bounded, so the derived name stays short."""
    oracle_noise: float = Field(0.0, ge=0, le=1)
    """Probability that the simulated oracle answers a uniformly random wrong class."""

    @field_validator("name")
    @classmethod
    def _safe(cls, name: str | None) -> str | None:
        if name is not None and not _SAFE_NAME.fullmatch(name):
            raise ValueError(
                f"campaign name {name!r} is not allowed: use letters, digits, '.', '_' and '-', not starting "
                f"with '.', at most {NAME_MAX} characters"
            )
        return name


PositiveFloat = Annotated[float, Field(gt=0)]
PRIOR_KEYS = ("prior_std", "prior_precision", "prior_layer_std", "prior_layer_precision", "prior_mixture", "prior_from")


class MixturePrior(_Section):
    """Blundell et al.'s scale mixture ``π N(0, σ1²) + (1 − π) N(0, σ2²)`` on every weight (``vi``)."""

    pi: float = Field(gt=0, lt=1)
    sigma1: PositiveFloat
    sigma2: PositiveFloat


class ModelSettings(_Section):
    family: Literal["mc_dropout", "laplace", "vi", "ensemble"] = "mc_dropout"
    """Whose predictive scores the pool: MC dropout, post-hoc Laplace, mean-field VI or a deep ensemble."""
    hidden: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)
    """Hidden layers of the MLP (vectors); the CNN for images has a fixed backbone."""
    dropout: float = Field(0.5, ge=0, lt=1)
    augment: Literal["auto", "none", "shift_rotate"] = "auto"
    """MC dropout and ensembles on images: train on minibatches shifted (up to 2/28 of the size) and rotated (up to
    10°) at random; ``auto``: on for image features (``representation: none``), off for vectors and embeddings."""
    steps: int = Field(500, ge=1)
    update_steps: int | None = Field(None, ge=1)
    """Steps of a belief update (``update: belief``), which fits only the new labels; ``null``: ``steps``."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    """Adam's weight decay of MAP training (every family but ``laplace`` with ``training: marglik``)."""
    training: Literal["marglik", "map"] = "marglik"
    """How the ``laplace`` family trains: ``marglik`` fits the network and its prior precisions together by
    maximising the all-weights KFAC evidence (Immer et al. 2021); ``map`` trains with ``weight_decay`` and tunes the
    prior post hoc."""
    prior_structure: Literal["layerwise", "scalar"] = "layerwise"
    """Marglik training: one prior precision per layer, or one for all weights."""
    predictive: Literal["last_layer_kfac", "last_layer_full", "evidence"] = "last_layer_kfac"
    """What a ``laplace`` network trained under an explicit prior (marglik or stated) predicts and scores the pool
    with: the last layer's Laplace (KFAC or full GGN) under that prior (test metrics by its probit, the pool by its
    samples), or ``evidence``, the all-weights
    posterior its evidence comes from (far too wide to predict with: ``benchmarks/evidence.py``)."""
    predictive_prior: Literal["retuned", "trained"] = "retuned"
    """After marglik training, the last-layer predictive's prior precision: ``retuned`` on that layer's own Laplace
    evidence at the trained network, or ``trained`` (the all-weights prior's last-layer value)."""
    members: int = Field(5, ge=1)
    """Members of a deep ensemble."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    prior_std: PositiveFloat | None = None
    """A stated Gaussian prior std of every weight (``laplace``, ``vi``); trained and evidenced under as given, never
    tuned. ``null``: laplace tunes its prior (``training``), vi uses 1."""
    prior_precision: PositiveFloat | None = None
    """The same as a precision ``1 / std²`` (give one of the two)."""
    prior_layer_std: dict[str, PositiveFloat] = {}
    """Prior std per layer group: a module name or dotted prefix, e.g. ``{head: 2.0, features.0: 0.5}``."""
    prior_layer_precision: dict[str, PositiveFloat] = {}
    prior_mixture: MixturePrior | None = None
    """``vi``: the scale-mixture prior ``{pi, sigma1, sigma2}`` of Blundell et al. (KL by Monte Carlo)."""
    prior_from: str | None = None
    """A saved posterior of an earlier campaign as the prior (``laplace``, ``vi``): a candidate checkpoint ``.pt``, or
    a workspace holding one for the candidate of the same name."""


class CandidateSettings(_Section):
    """One candidate model of a round: a name plus the ``model`` keys it changes."""

    name: str = Field(min_length=1)
    family: Literal["mc_dropout", "laplace", "vi", "ensemble"] | None = None
    hidden: int | None = Field(None, ge=1)
    depth: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    training: Literal["marglik", "map"] | None = None
    prior_structure: Literal["layerwise", "scalar"] | None = None
    members: int | None = Field(None, ge=1)
    prior_std: PositiveFloat | None = None
    prior_precision: PositiveFloat | None = None
    prior_layer_std: dict[str, PositiveFloat] | None = None
    prior_layer_precision: dict[str, PositiveFloat] | None = None
    prior_mixture: MixturePrior | None = None
    prior_from: str | None = None


class SelectionSettings(_Section):
    """Model selection by Bayes factors among ``candidates`` (an empty list: the ``model`` section alone)."""

    candidates: list[CandidateSettings] = [
        CandidateSettings(name="h64-d1", hidden=64, depth=1),
        CandidateSettings(name="h128-d2", hidden=128, depth=2),
        CandidateSettings(name="h256-d2", hidden=256, depth=2),
    ]
    subset: Literal["auto", "last_layer", "all"] = "auto"
    """Weights the Laplace evidence covers; ``auto``: all weights when every candidate is a ``laplace`` network
    (trained by marginal likelihood), else the last layer. Networks that an all-weights KFAC does not cover
    (convolutions) fall back to the last layer, logged."""
    structure: Literal["full", "kfac", "diag"] = "kfac"
    """Hessian structure of the Laplace evidence; one structure per round keeps log Z values comparable."""
    prior_tuning: Literal["evidence", "validation"] = "evidence"
    """``laplace`` candidates: the prior precision tuned on the evidence, or then scaled by the grid factor of lowest
    NLL on a held-out 20% of the labels (the candidate is refitted on all of them); logged per round."""
    exact_ggn: bool = True
    """The evidence's log determinant under the exact GGN (computed over the labels, cost cubic in labels × classes;
    blocks of 16,384 rows beyond, a lower bound) instead of under ``structure``, whose KFAC over-penalises wide and
    deep networks. Networks with layers other than ``nn.Linear`` and belief updates use ``structure``."""
    condition_on: float = Field(0.5, ge=0.0, lt=1.0)
    """With ``exact_ggn``: compare the evidence of the labels outside a seeded fraction ``D₁`` of them given ``D₁``,
    ``log p(D₂|D₁)`` (Lotfi et al. 2022; a partial Bayes factor), the same ``D₁`` for every candidate; 0: the
    marginal likelihood ``log Z``, which also scores how well each prior alone predicts the first labels and picked
    worse-generalising networks on MNIST (``benchmarks/evidence.py``)."""
    criterion: Literal["auto", "validation_nll"] = "auto"
    """What the round selects by: ``auto``, the evidence (Bayes factors) when every candidate has one, else the NLL
    of a held-out 20% of the labels; ``validation_nll``, that NLL whenever there are two or more candidates (each
    fitted without the held-out labels, the selected one refitted on all: one fit more per round). Why, with the
    measurements: ``learner.candidates.CRITERIA``."""
    compare_test_items: int | None = Field(2000, ge=1)
    """Test items the round's Bayes-factor table measures every candidate on (``test_nll``, ``test_accuracy``): a
    subset drawn with the campaign's seed, the same for every candidate; null: all of them. The selected model's
    logged test metrics and reliability diagram always use every test item; each other candidate's evaluation
    costs a predictive pass over these items only (3 candidates on MNIST's 10,000: 1.6 s of a 11 s round)."""
    test_samples: int = Field(100, ge=1)
    """Posterior draws per test item of the round's test metrics, fresh for every 1,024 items
    (``learner.evaluation_predictive``), whatever ``acquisition.samples`` scores the pool with. The cost is linear
    in it (MNIST's 10k test items at 100: ~0.5 s of a 7 s round); 50 halves that but biases the test NLL upwards by
    0.003–0.007 on MNIST networks and by up to 0.02 on digits networks at 20 labels (measured against 4,000 draws)."""
    workers: int = Field(1, ge=1)
    """Candidates fitted concurrently (threads). Dropout draws from torch's process-wide RNG, so more than one
    worker trades reproducibility of MC-dropout training for speed."""

    @field_validator("candidates")
    @classmethod
    def _unique(cls, candidates: list[CandidateSettings]) -> list[CandidateSettings]:
        names = [c.name for c in candidates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"candidate names must be unique; repeated: {duplicates}")
        return candidates


class AcquisitionSettings(_Section):
    name: str = "powerbald"
    """PowerBALD (Kirsch et al. 2023): k items drawn without replacement with probability ∝ BALD score, not the
    top k by BALD, whose picks crowd into one ambiguous region. Measured here with the other defaults: digits, mean
    test accuracy over 10 rounds 0.856 vs BALD's 0.839 and random's 0.824 (5 seeds, each ahead of random); MNIST,
    95% test accuracy with 40 labels where top-k BALD and random needed more (``benchmarks/``, README)."""
    samples: int = Field(100, ge=1)
    """Posterior draws S per item. 100, not 20: with 20 the mutual information of a 10-class predictive is
    estimated too noisily to rank a pool (digits: BALD ahead of random on 2 of 5 seeds at S = 20, 5 of 5 at 100)."""
    pool_subsample: Annotated[int, Field(ge=1)] | Literal["auto", "all"] = "auto"
    """Score only this many pool items, drawn at random each round (Gal et al. 2017); ``all`` (or ``null``) scores
    the whole pool; ``auto``: 20 × ``campaign.k`` for a top-k acquisition, all for powerbald, random and batchbald
    (``learner.query.resolve_subsample``)."""
    batch_candidates: int = Field(1000, ge=1)
    """BatchBALD chooses greedily among this many of the pool's best items by BALD."""
    shards: int = Field(1, ge=1)
    """Pool scoring is split into this many Prefect tasks (threads, or Dask workers with ``dask_address``)."""
    dask_address: str | None = None
    """Scheduler address of a Dask cluster (``tcp://host:8786``) to run the round's tasks on via prefect-dask."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in ACQUISITION_NAMES:
            raise ValueError(f"unknown acquisition {name!r}; expected one of {list(ACQUISITION_NAMES)}")
        return name

    @field_validator("pool_subsample", mode="before")
    @classmethod
    def _null_is_all(cls, value: Any) -> Any:
        """``null``, what params files wrote before ``all`` existed, still means the whole pool."""
        return "all" if value is None else value


class RepresentationSettings(_Section):
    """Features learnt from the unlabelled pool that the models are trained on (``representation/``)."""

    name: Literal["auto", "none", "spectral"] = "auto"
    """``spectral``: Laplacian eigenmaps of the pool's neighbour graph, new items mapped by Nyström; ``none``: the
    imported features; ``auto``: ``spectral`` for image data sets with a pool of at least ``auto_min_pool``
    items, ``none`` otherwise."""
    dim: int = Field(20, ge=2)
    neighbors: int = Field(10, ge=2)
    pca_dim: int = Field(50, ge=1)
    auto_min_pool: int = Field(1000, ge=1)


class StoppingSettings(_Section):
    """When more labels stop changing the model: its predicted classes on a fixed set of unlabelled pool items,
    compared round to round by Cohen's κ (``acquisition.stopping``)."""

    items: int = Field(1000, ge=0)
    """Pool items in the stop set, drawn (seeded) when a round first has a model and again after items are added to
    the campaign; 0: no stop set and no signal."""
    agreement: float = Field(0.99, gt=0, le=1)
    """κ at or above which a round's predictions count as unchanged from the round before."""
    rounds: int = Field(3, ge=1)
    """Rounds in a row at or above ``agreement`` after which the round and ``status`` say the predictions are
    stable."""
    when_stable: Literal["note", "stop"] = "note"
    """What a stable round does: ``note`` says so and queues as usual (people decide); ``stop`` also queues nothing
    new — a simulated campaign ends there and a schedule asks no more labels — until the predictions move again
    (answers to items still pending, or new items from ``beliefloop ingest``, which draws a new stop set)."""


class LabelsSettings(_Section):
    policy: Literal["latest", "majority"] = "latest"
    """The training label of an item several annotators answered: ``latest`` (the latest answer by anyone) or
    ``majority`` (each annotator's latest answer is one vote; the most common wins, a tie leaves the item out of
    training until another answer resolves it)."""


class StoreSettings(_Section):
    url: str | None = None
    """SQLAlchemy URL of the label store; default ``sqlite:///<workspace>/labels.db``."""
    busy_timeout: float = Field(30.0, gt=0)
    """Seconds a SQLite write waits for another connection's lock before the attempt fails."""
    attempts: int = Field(3, ge=1)
    """Attempts of a label-store call that found the database locked, before the command gives up (one line)."""


class TrackingSettings(_Section):
    uri: str | None = None
    """MLflow tracking URI; default ``sqlite:///<workspace>/mlflow.db`` with artifacts in ``mlartifacts/``."""
    register_model: bool = True
    """Log each round's selected model as an MLflow pyfunc and register it as a version of ``<campaign>-model``."""


class _YamlParams(PydanticBaseSettingsSource):
    """Reads the params file named by :func:`load_settings` (lowest priority after the defaults)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - whole-file source
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _params_file.get()
        if path is None:
            return {}
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SettingsError(f"cannot read params file {path}: {error}") from error
        if not isinstance(loaded, dict):
            raise SettingsError(f"params file {path}: expected a mapping at the top, got {type(loaded).__name__}")
        return loaded


class Settings(BaseSettings):
    """Every knob of a campaign; ``Settings.model_dump()`` is what gets logged as MLflow params."""

    model_config = SettingsConfigDict(env_prefix="BELIEFLOOP_", env_nested_delimiter="__", extra="forbid")

    workspace: Path = Path("workspace")
    dataset: DatasetSettings = DatasetSettings()
    campaign: CampaignSettings = CampaignSettings()
    model: ModelSettings = ModelSettings()
    acquisition: AcquisitionSettings = AcquisitionSettings()
    selection: SelectionSettings = SelectionSettings()
    representation: RepresentationSettings = RepresentationSettings()
    stopping: StoppingSettings = StoppingSettings()
    update: Literal["retrain", "belief"] = "retrain"
    """``belief``: a round starts from the previous round's posterior as its prior and fits only the new labels."""
    labels: LabelsSettings = LabelsSettings()
    store: StoreSettings = StoreSettings()
    tracking: TrackingSettings = TrackingSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return init_settings, env_settings, _YamlParams(settings_cls)

    @field_validator("workspace", mode="before")
    @classmethod
    def _not_empty(cls, workspace: Any) -> Any:
        if isinstance(workspace, str) and not workspace.strip():  # Path("") would be the current folder
            raise ValueError("the workspace must not be empty (default: workspace)")
        return workspace

    @property
    def families(self) -> set[str]:
        """The model families the round fits: every candidate's (its own or ``model``'s), else ``model``'s."""
        return {c.family or self.model.family for c in self.selection.candidates} or {self.model.family}

    @model_validator(mode="after")
    def _belief_needs_a_posterior(self) -> Settings:
        if self.update == "belief":
            unsupported = sorted(self.families - {"laplace", "vi"})
            if unsupported:
                raise ValueError(
                    f"update: belief needs a posterior to carry over (families laplace or vi); got {unsupported}"
                )
        return self

    @model_validator(mode="after")
    def _priors_fit_their_family(self) -> Settings:
        """Each candidate's stated prior (its own keys over ``model``'s) suits its family and is well-formed."""
        entries = [("model", self.model.family, {})] + [
            (f"selection.candidates[{c.name}]", c.family or self.model.family, c.model_dump(include=set(PRIOR_KEYS)))
            for c in self.selection.candidates
        ]
        for where, family, own in entries:
            prior = {key: getattr(self.model, key) if own.get(key) is None else own[key] for key in PRIOR_KEYS}
            if prior["prior_std"] is not None and prior["prior_precision"] is not None:
                raise ValueError(f"{where}: give prior_std or prior_precision, not both")
            both = sorted(set(prior["prior_layer_std"]) & set(prior["prior_layer_precision"]))
            if both:
                raise ValueError(f"{where}: layer group(s) {both} given both prior_layer_std and prior_layer_precision")
            gaussian = [k for k in PRIOR_KEYS[:4] if prior[k]] if family not in ("laplace", "vi") else []
            if gaussian or (prior["prior_from"] and family not in ("laplace", "vi")):
                raise ValueError(f"{where}: {gaussian or ['prior_from']} need family laplace or vi, got {family!r}")
            if prior["prior_mixture"] is not None and family != "vi":
                raise ValueError(f"{where}: prior_mixture (the scale mixture) needs family vi, got {family!r}")
            if prior["prior_from"] and not Path(prior["prior_from"]).exists():
                raise ValueError(f"{where}: prior_from {prior['prior_from']!r}: no such checkpoint file or workspace")
        return self

    @property
    def campaign_name(self) -> str:
        if self.campaign.name:
            return self.campaign.name
        return f"{dataset_slug(self.dataset.name)}-{self.acquisition.name}-seed{self.campaign.seed}"

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{(self.workspace / 'labels.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return (self.workspace / "mlartifacts").resolve().as_uri()

    @property
    def datasets_dir(self) -> Path:
        return self.workspace / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.workspace / "models"


def load_settings(params: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Validate settings from ``params`` (YAML), the environment and ``overrides`` (nested dict, CLI flags).

    ``None`` values in ``overrides`` mean "flag not given" and are dropped.
    """
    token = _params_file.set(Path(params) if params else None)
    try:
        return Settings(**_drop_none(overrides or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
        )
        source = f" (params file {params})" if params else ""
        raise SettingsError(f"invalid settings{source}: {problems}") from None
    except SourceError as error:  # a BELIEFLOOP_* value that does not parse, e.g. a list that is not JSON
        raise SettingsError(
            f"invalid settings: {error} ({error.__cause__}); lists and mappings in BELIEFLOOP_* variables must be JSON"
        ) from None
    finally:
        _params_file.reset(token)


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            cleaned[key] = value
    return cleaned
