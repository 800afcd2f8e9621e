"""One validated settings object: defaults < ``params.yaml`` < ``BELIEFLOOP_*`` environment < CLI flags.

The same ``params.yaml`` drives DVC (``dvc exp run -S acquisition.name=random``) and the CLI. Unknown keys are
rejected with a message naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ACQUISITION_NAMES = (
    "bald",
    "batchbald",
    "entropy",
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
    """A bundled scikit-learn set (digits, breast_cancer, wine, iris) or a path to .npz / .csv / .parquet."""
    label_column: str | None = None
    id_column: str | None = None
    test_fraction: float = Field(0.25, gt=0, lt=1)


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


class ModelSettings(_Section):
    family: Literal["mc_dropout", "laplace", "vi", "ensemble"] = "mc_dropout"
    """Whose predictive scores the pool: MC dropout, post-hoc Laplace, mean-field VI or a deep ensemble."""
    hidden: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)
    """Hidden layers of the MLP (vectors); the CNN for images has a fixed backbone."""
    dropout: float = Field(0.5, ge=0, lt=1)
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
    members: int = Field(5, ge=1)
    """Members of a deep ensemble."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""


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
    name: str = "bald"
    samples: int = Field(20, ge=1)
    pool_subsample: int | None = Field(None, ge=1)
    """Score only this many pool items, drawn at random each round (Gal et al. 2017); ``null`` scores all."""
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


class StoreSettings(_Section):
    url: str | None = None
    """SQLAlchemy URL of the label store; default ``sqlite:///<workspace>/labels.db``."""


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
    update: Literal["retrain", "belief"] = "retrain"
    """``belief``: a round starts from the previous round's posterior as its prior and fits only the new labels."""
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

    @model_validator(mode="after")
    def _belief_needs_a_posterior(self) -> Settings:
        if self.update == "belief":
            families = {c.family or self.model.family for c in self.selection.candidates} or {self.model.family}
            unsupported = sorted(families - {"laplace", "vi"})
            if unsupported:
                raise ValueError(
                    f"update: belief needs a posterior to carry over (families laplace or vi); got {unsupported}"
                )
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
