"""MLflow records of a campaign: experiment = campaign, a parent run per campaign, a nested run per round.

Runs are found again by tags (``beliefloop.role``, ``beliefloop.round``), so a re-run of a crashed round logs
into the same run instead of creating a second one. Everything goes through ``MlflowClient`` with explicit run
ids: fluent ``mlflow.log_*`` calls from Prefect worker threads would not see the active run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from data.store import checkpoint_at_exit, database_url, sqlite_file
from data.user_cache import cached_file, partial_path

ROLE, ROUND = "beliefloop.role", "beliefloop.round"
EXPERIMENT_KIND = "mlflow.experimentKind"
"""MLflow's own tag for what an experiment holds: a campaign is model development, not a GenAI app."""
UI_RUNS_PAGE = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
"""A campaign's runs in the MLflow UI. MLflow 3's UI opens an experiment on its GenAI overview unless the link (or
the browser's remembered choice) selects the machine-learning view, which lists the runs."""
ENTRY_BATCH, PARAM_BATCH = 1000, 100
"""Entries per ``log_batch`` call: MLflow accepts at most 1,000 entries in all, 100 of them params and 100 tags."""


@functools.lru_cache(maxsize=8)
def tracking_client(tracking_uri: str) -> MlflowClient:
    """One client per tracking store and process: opening a SQL store costs seconds (engine, schema check), and
    a process running many rounds (a simulated campaign, a served deployment) would pay it every round. A bare
    ``postgresql://`` URI gets the installed driver (``data.store.database_url``). A new SQLite store starts as a
    copy of an empty one (:func:`copy_new_database`), and is switched to write-ahead logging (:func:`use_wal`)."""
    path = sqlite_file(tracking_uri)
    if path is not None:
        if path.parent.is_dir() and not path.exists():
            copy_new_database(path)
        use_wal(path)
    return MlflowClient(tracking_uri=database_url(tracking_uri))


def copy_new_database(path: Path) -> None:
    """Create the SQLite tracking database at ``path`` as a copy of an empty one MLflow made earlier, kept in the
    user's cache per MLflow version (:mod:`data.user_cache`), instead of letting MLflow build it: MLflow makes a new
    database by running every schema migration it ships (1.1 s here, paid by every new workspace), a copy takes
    milliseconds. The copy has no experiment, so MLflow adds its default experiment itself on opening it, located as
    it would locate it now.

    Best effort: without a usable copy MLflow builds the database as before. ``path`` is created only if absent
    (a hard link from the finished copy), so a database another process just made is never replaced."""
    import mlflow

    template = cached_file(f"mlflow-{mlflow.__version__}.db", _empty_database)
    if template is None:
        return
    partial = partial_path(path)
    try:
        shutil.copyfile(template, partial)
        with contextlib.closing(sqlite3.connect(partial)) as db:
            db.execute("SELECT version_num FROM alembic_version").fetchone()  # a readable MLflow database
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
    except sqlite3.Error:
        template.unlink(missing_ok=True)  # damaged: made again next time
    except OSError:
        pass  # no room, no hard links here: MLflow builds the database
    finally:
        partial.unlink(missing_ok=True)


def _empty_database(path: Path) -> None:
    """An MLflow-initialised SQLite tracking database at ``path``, without experiments (``OSError`` when MLflow
    cannot make it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy.exc import SQLAlchemyError

    try:
        SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "mlruns")).engine.dispose()
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("DELETE FROM experiments")  # the default experiment, made again by MLflow in each copy
    except (sqlite3.Error, SQLAlchemyError, MlflowException) as error:
        raise OSError(f"MLflow could not make an empty tracking database: {error}") from error


def use_wal(path: Path) -> None:
    """Put the SQLite database at ``path`` (created empty when missing; MLflow then creates its tables) in WAL
    mode, which the file keeps for every later connection, MLflow's included: a commit then syncs the log once
    instead of a rollback journal's several (2.4 vs 9.9 ms a commit here), and a round makes ~35 commits to the
    tracking store. Best effort: a database another process holds locked keeps its mode.

    At exit the log is folded back into the file (:func:`data.store.checkpoint_at_exit`), so the file alone holds
    everything: DVC caches ``workspace/mlflow.db`` without its ``-wal``."""
    if not path.parent.is_dir():
        return  # MLflow says what is wrong with the URI
    with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    checkpoint_at_exit(path)


class CampaignTracker:
    """Finds or creates the campaign's experiment and runs in one tracking store."""

    def __init__(self, tracking_uri: str, artifact_root: str, campaign: str) -> None:
        self.client = tracking_client(tracking_uri)
        self.campaign = campaign
        experiment = self.client.get_experiment_by_name(campaign)
        if experiment is None:
            # A tracking server (``mlflow server``) stores artifacts where it was told to, for every client; a
            # database or file store keeps them in the workspace.
            served = tracking_uri.startswith(("http://", "https://"))
            self.experiment_id = self.client.create_experiment(
                campaign,
                artifact_location=None if served else f"{artifact_root.rstrip('/')}/{campaign}",
                tags={EXPERIMENT_KIND: "custom_model_development"},
            )
        else:
            self.experiment_id = experiment.experiment_id

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def campaign_run(self, params: Mapping[str, Any]) -> str:
        """The parent run of the campaign (created on first use, with the campaign's params)."""
        run_id = self._find(f"tags.`{ROLE}` = 'campaign'")
        if run_id is None:
            run = self.client.create_run(self.experiment_id, tags={ROLE: "campaign", MLFLOW_RUN_NAME: self.campaign})
            run_id = run.info.run_id
            self.log_params(run_id, params)
        return run_id

    def round_run(self, parent_run_id: str, round_: int) -> str:
        """The nested run of ``round_``; reopened (status RUNNING) when a crashed round is re-run."""
        run_id = self._find(f"tags.`{ROLE}` = 'round' and tags.`{ROUND}` = '{round_}'")
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"round-{round_:03d}",
                tags={ROLE: "round", ROUND: str(round_), MLFLOW_PARENT_RUN_ID: parent_run_id},
            )
            return run.info.run_id
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.log_batch(run_id, {}, step=0, params=params)

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Metrics (at ``step``), params and tags in as few transactions as MLflow's batch limits allow (one per
        round), not one per entry. Idempotent per (run, key, step): a re-run round finds its run again by tag, and
        params the run holds and metrics it holds at ``step`` are left as they are (the first value stands), so
        nothing is logged twice."""
        existing = self.client.get_run(run_id).data if params or metrics else None
        new_params = [Param(key, value) for key, value in _flatten(params or {}).items() if key not in existing.params]
        now = int(time.time() * 1000)
        new_metrics = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if key not in existing.metrics or not self._logged_at(run_id, key, step)
        ]
        new_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
        while new_metrics or new_params or new_tags:
            batch_params, batch_tags = new_params[:PARAM_BATCH], new_tags[:PARAM_BATCH]
            batch_metrics = new_metrics[: ENTRY_BATCH - len(batch_params) - len(batch_tags)]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)
            new_params, new_tags = new_params[len(batch_params) :], new_tags[len(batch_tags) :]
            new_metrics = new_metrics[len(batch_metrics) :]

    def _logged_at(self, run_id: str, key: str, step: int) -> bool:
        return any(m.step == step for m in self.client.get_metric_history(run_id, key))

    def log_artifacts(self, run_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path))

    def log_table(self, run_id: str, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table artifact that MLflow's UI shows as a table (``columns``: name → values)."""
        self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FINISHED")

    def finish_campaign(self, parent_id: str, results: list[Mapping[str, float]]) -> None:
        """End a simulated campaign's parent run FINISHED, with its summary: the final round's metrics as
        ``final_*`` and the mean test accuracy over rounds (the area under the learning curve)."""
        scored = [r for r in results if "test_accuracy" in r]
        summary = {f"final_{key}": scored[-1][key] for key in ("test_accuracy", "test_nll", "test_ece") if scored}
        if scored:
            summary["mean_test_accuracy"] = sum(r["test_accuracy"] for r in scored) / len(scored)
        self.log_batch(parent_id, summary, step=len(results), tags={"beliefloop.rounds": str(len(results))})
        self.finish(parent_id)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
