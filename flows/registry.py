"""The selected model of each round in MLflow's model registry: a pyfunc that a reviewer loads and calls.

The model is logged *from code* (``flows/round_model.py``, which MLflow runs to load it): the weights-only checkpoint
is an artifact and the model's settings its ``model_config``, so nothing is pickled, and loading it needs beliefloop
installed. Per input row (the model's features ``x0 … x{D-1}``, images flattened) it returns the posterior
predictive's class probabilities ``p_<class>``, the predicted class, the predictive entropy and BALD, from the same
S posterior draws that scored the pool (``learner.pool_predict`` with the round's seed). Each round's model becomes
a new version of ``<campaign>-model`` tagged with its round.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from acquisition import bald, predictive_entropy
from flows.tracking import CampaignTracker
from learner import load_model, pool_predict

MODEL_CODE = Path(__file__).with_name("round_model.py")
ROUND_TAG = "beliefloop.round"
EXAMPLE_ROWS = 3


@dataclass(frozen=True)
class RoundModelConfig:
    """What the pyfunc needs besides the checkpoint (its MLflow ``model_config``)."""

    classes: list[str]
    feature_shape: list[int]
    samples: int
    seed: int

    @property
    def columns(self) -> list[str]:
        """Input columns: one per feature, images flattened."""
        return [f"x{i}" for i in range(int(np.prod(self.feature_shape)))]


def registered_name(campaign: str) -> str:
    return f"{campaign}-model"


def predictive_table(model, x_N_D: torch.Tensor, config: RoundModelConfig) -> pd.DataFrame:
    """Per row: ``p_<class>`` (the posterior predictive), ``predicted`` (class name), ``predictive_entropy`` and
    ``bald`` (nats), from ``config.samples`` draws seeded as the round's pool scoring."""
    x = x_N_D.reshape(-1, *config.feature_shape)
    probs_S_N_C = pool_predict(model, x, config.samples, seed=config.seed).double()
    mean_N_C = probs_S_N_C.mean(0).numpy()
    table = pd.DataFrame(mean_N_C, columns=[f"p_{c}" for c in config.classes])
    table["predicted"] = np.asarray(config.classes, dtype=object)[mean_N_C.argmax(1)]
    table["predictive_entropy"] = predictive_entropy(probs_S_N_C).numpy()
    table["bald"] = bald(probs_S_N_C).numpy()
    return table


class RoundModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: loads the checkpoint with ``weights_only=True`` and answers :func:`predictive_table`."""

    def load_context(self, context) -> None:
        self.config = RoundModelConfig(**context.model_config)
        payload = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        self.model = load_model(payload, "cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = [c for c in self.config.columns if c not in model_input.columns]
        if missing:
            raise ValueError(
                f"model input: expected the {len(self.config.columns)} feature columns x0..x"
                f"{len(self.config.columns) - 1}, missing {missing[:5]}"
            )
        x = torch.from_numpy(np.ascontiguousarray(model_input[self.config.columns].to_numpy(np.float32)))
        return predictive_table(self.model, x, self.config)


def log_round_model(
    tracker: CampaignTracker, run_id: str, round_: int, checkpoint: Path, model, config: RoundModelConfig, example
) -> ModelVersion:
    """Log the round's selected model (``model``, saved at ``checkpoint``) as a pyfunc under the round's run and
    register it as a new version of ``<campaign>-model`` tagged with the round; ``example``: a few rows of model
    features, the input example. A re-run of the round finds its version by run id and logs nothing again."""
    client, name = tracker.client, registered_name(tracker.campaign)
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return existing[0]
    example_x = torch.as_tensor(np.asarray(example, dtype=np.float32)).reshape(len(example), -1)
    inputs = pd.DataFrame(example_x.double().numpy(), columns=config.columns)
    signature = infer_signature(inputs, predictive_table(model, example_x, config))
    logged = client.create_logged_model(
        tracker.experiment_id, name="model", source_run_id=run_id, tags={ROUND_TAG: str(round_)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path,
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            model_config=asdict(config),
            signature=signature,
            input_example=inputs,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                run_id=run_id,
                model_id=logged.model_id,
                model_uuid=logged.model_id,
            ),
        )
        client.log_model_artifacts(logged.model_id, str(path))
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=round_)])
    try:
        client.create_registered_model(
            name, description=f"The selected model of each round of campaign {tracker.campaign}"
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, logged.artifact_location, run_id=run_id, tags={ROUND_TAG: str(round_)}, model_id=logged.model_id
    )  # the artifact location, not ``models:/<id>``: MLflow's store resolves that with the global tracking URI
    # The link the UI shows in the run's "Registered models" column (what ``mlflow.register_model`` records).
    link = [{"name": version.name, "version": version.version}]
    client.set_logged_model_tags(logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(link)})
    return version
