"""The code MLflow runs to load a round's registered model (a model logged from code: nothing is pickled)."""

from mlflow.models import set_model

from flows.registry import RoundModel

set_model(RoundModel())
