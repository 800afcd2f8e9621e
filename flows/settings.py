"""One validated settings object: defaults < ``params.yaml`` < ``BELIEFLOOP_*`` environment < CLI flags.

The same ``params.yaml`` drives DVC (``dvc exp run -S acquisition.name=random``) and the CLI. Unknown keys are
rejected with a message naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from acquisition import ACQUISITION_FUNCTIONS

_params_file: ContextVar[Path | None] = ContextVar("beliefloop_params_file", default=None)


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


class CampaignSettings(_Section):
    name: str | None = None
    """Campaign (= MLflow experiment); derived from dataset, acquisition and seed when not given."""
    rounds: int = Field(10, ge=1)
    k: int = Field(10, ge=1)
    initial: int = Field(20, ge=0)
    """Size of the class-balanced labeled seed set of a simulated campaign."""
    min_labels: int = Field(20, ge=1)
    """A live round queues a seeded random batch until this many labels exist."""
    seed: int = 0
    oracle_noise: float = Field(0.0, ge=0, le=1)
    """Probability that the simulated oracle answers a uniformly random wrong class."""


class ModelSettings(_Section):
    family: Literal["mc_dropout"] = "mc_dropout"
    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    steps: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""


class AcquisitionSettings(_Section):
    name: str = "bald"
    samples: int = Field(20, ge=1)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in ACQUISITION_FUNCTIONS:
            raise ValueError(f"unknown acquisition {name!r}; expected one of {sorted(ACQUISITION_FUNCTIONS)}")
        return name


class StoreSettings(_Section):
    url: str | None = None
    """SQLAlchemy URL of the label store; default ``sqlite:///<workspace>/labels.db``."""


class TrackingSettings(_Section):
    uri: str | None = None
    """MLflow tracking URI; default ``sqlite:///<workspace>/mlflow.db`` with artifacts in ``mlartifacts/``."""


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
    store: StoreSettings = StoreSettings()
    tracking: TrackingSettings = TrackingSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return init_settings, env_settings, _YamlParams(settings_cls)

    @property
    def campaign_name(self) -> str:
        if self.campaign.name:
            return self.campaign.name
        return f"{Path(self.dataset.name).stem}-{self.acquisition.name}-seed{self.campaign.seed}"

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
