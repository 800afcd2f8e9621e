"""``beliefloop`` command line. Heavy imports (torch, Prefect, MLflow) happen inside commands, so ``--help`` is fast."""

from __future__ import annotations

import contextvars
import functools
import gc
import getpass
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

# Idle OpenMP threads sleep instead of spinning: on a shared or small machine spinning threads made small torch
# operations 10-25x slower (measured on 2 cores under load). Must be set before torch loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class CommandError(RuntimeError):
    """A failure of a command that is not a bug (the environment, not the code); reported in one line."""


_state = {"debug": False}
"""Global options of the invocation (typer's pattern: the app callback sets them before every command)."""


class _App(typer.Typer):
    """Typer app whose commands report bad input (file, item, key) in one line instead of a traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(function):
            @functools.wraps(function)
            def friendly(*f_args, **f_kwargs):
                try:
                    return function(*f_args, **f_kwargs)
                except (typer.Exit, typer.Abort):  # a command's own exit code, already explained
                    raise
                except Exception as error:
                    if _state["debug"]:
                        raise
                    from data import DatasetError, FeatureStoreError  # here: pandas, for a failure only
                    from data.store import StoreError
                    from flows.failures import fault_message
                    from flows.settings import SettingsError

                    fault = fault_message(error)
                    if fault is not None:  # the environment failed, not the input: exit 3, retry later
                        typer.secho(f"error: {fault}", fg="red", err=True)
                        raise typer.Exit(3) from None
                    user_errors = (
                        DatasetError,
                        FeatureStoreError,
                        StoreError,
                        SettingsError,
                        CommandError,
                        typer.BadParameter,
                    )
                    if not isinstance(error, user_errors):
                        raise
                    typer.secho(f"error: {error}", fg="red", err=True)
                    raise typer.Exit(2) from None

            return register(friendly)

        return decorator


app = _App(no_args_is_help=True, add_completion=False, help="Bayesian active learning campaigns.")
queue_app = _App(no_args_is_help=True, help="Inspect the labeling queue.")
app.add_typer(queue_app, name="queue")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show a failure's traceback instead of one line.")] = False,
) -> None:
    """Bayesian active learning campaigns."""
    _state["debug"] = debug


ParamsOpt = Annotated[Path | None, typer.Option("--params", help="params.yaml to read (DVC's params file).")]
WorkspaceOpt = Annotated[
    Path | None, typer.Option("--workspace", help="Campaign workspace folder (default: ./workspace).")
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", help="digits | breast_cancer | wine | iris, a .npz/.csv/.parquet path, or a folder of images."
    ),
]
LabelColumnOpt = Annotated[
    str | None, typer.Option("--label-column", help="CSV/Parquet: the column holding labels (blank = unknown).")
]
IdColumnOpt = Annotated[
    str | None, typer.Option("--id-column", help="CSV/Parquet: a column of stable item ids (default: row-<i>).")
]
TextColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--text-column", help="CSV/Parquet: a column of free text (shown as text, featurised for the models)."
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Every class, comma-separated (a,b,c): classes no labelled row has yet."),
]
TestFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--test-fraction",
        help="Share of labelled rows held out for testing when the file has no `split` column; 0: none.",
    ),
]
ImageSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        help="Folders of images: resize every image to N × N (64) or HEIGHTxWIDTH (48x64) pixels; "
        "by default all must share one size.",
    ),
]
AcquisitionOpt = Annotated[
    str | None,
    typer.Option(
        "--acquisition",
        help="Score function (default: powerbald): bald (top k), batchbald, epig, predictive_entropy, random, ...",
    ),
]
CampaignOpt = Annotated[str | None, typer.Option("--campaign", help="Campaign name (= MLflow experiment).")]
SubsampleOpt = Annotated[
    str | None,
    typer.Option(
        "--pool-subsample",
        help="Score a random subset of M pool items per round; auto (default): 20 × k for top-k acquisitions; "
        "all: every item.",
    ),
]
DaskOpt = Annotated[
    str | None, typer.Option("--dask-address", help="Dask scheduler (tcp://host:8786) to run the round's tasks on.")
]
ShardsOpt = Annotated[int | None, typer.Option("--shards", help="Pool-scoring tasks per round (default: 1).")]
StopWhenStableOpt = Annotated[
    bool,
    typer.Option(
        "--stop-when-stable",
        help="Queue nothing new while the predictions are stable (stopping.when_stable: stop).",
    ),
]


def _stopping_overrides(stop_when_stable: bool) -> dict[str, Any]:
    """The ``stopping`` settings ``--stop-when-stable`` gives (without it: the params file's, else the default)."""
    return {"when_stable": "stop" if stop_when_stable else None}


def _dataset_overrides(
    dataset: str | None,
    label_column: str | None,
    id_column: str | None,
    classes: str | None,
    test_fraction: float | None,
    text_column: str | None,
    image_size: str | None,
) -> dict[str, Any]:
    """The ``dataset`` settings that the flags give (``None``: not given)."""
    return {
        "name": dataset,
        "label_column": label_column,
        "id_column": id_column,
        "text_column": text_column,
        "classes": None if classes is None else [c.strip() for c in classes.split(",")],
        "test_fraction": test_fraction,
        "image_size": image_size,
    }


def _prefect_defaults() -> None:
    """Quiet, offline-friendly Prefect and MLflow defaults; the user's environment wins.

    Prefect's temporary server gets 300 s to start (the default 20 s, even 60 s, is missed on a loaded machine).
    Without ``--debug``, flow and task runs do not log the traceback of a failure the command reports in one line.
    """
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # copying the checkpoint into a round's model drew a bar
    }
    if not _state["debug"]:
        defaults["PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL"] = "CRITICAL"
        defaults["PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"] = "CRITICAL"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Also when MLflow was imported (and its logger configured) before this ran, as in a process that runs several.
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    if not _state["debug"]:  # each retry of an unreachable tracking server; the failure is reported in one line
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@functools.cache
def _freeze_imports() -> None:
    """Once a process: what is alive now (mostly modules) leaves the garbage collector's scans (``gc.freeze``)."""
    gc.freeze()


@contextmanager
def _flow_context(meanwhile: Callable[[], object] | None = None):
    """Start Prefect's temporary server when no server is set (its failure is one line) and point flows at it
    (``PREFECT_API_URL``), disable flow heartbeats then (they only serve crash detection by a server), and keep one
    Prefect client for every flow run inside.

    ``meanwhile`` (imports, opening stores) runs while the server process starts, so the two overlap instead of
    adding up: the server takes seconds to start, and the caller's imports as long again. The objects alive then
    (torch's, MLflow's, Prefect's modules: ~800k) are moved out of the garbage collector's sight (``gc.freeze``):
    otherwise its full collections, each scanning all of them, took 1.6 s of a process's first MNIST round.
    """
    _prefect_defaults()
    from prefect.context import SyncClientContext
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        if meanwhile is not None:
            meanwhile()
        _freeze_imports()
        with SyncClientContext.get_or_create():
            yield
        return
    server = _temporary_server()
    # The environment's value, applied even when Prefect's settings were loaded before _prefect_defaults ran.
    timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    failures: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=timeout)
        except BaseException as error:  # handed to the caller's thread
            failures.append(error)

    # A daemon thread, with the caller's Prefect settings: a failure of ``meanwhile`` exits without waiting for it.
    starting = threading.Thread(target=contextvars.copy_context().run, args=(start,), daemon=True)
    starting.start()
    if meanwhile is not None:
        meanwhile()
    starting.join()
    if failures and isinstance(failures[0], RuntimeError):
        raise CommandError(
            f"Prefect's temporary server did not start within {timeout} s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or point PREFECT_API_URL at a running server"
        ) from failures[0]
    if failures:
        raise failures[0]
    _freeze_imports()
    quiet_and_here = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_API_URL: server.api_url}
    with temporary_settings(quiet_and_here), SyncClientContext.get_or_create():
        yield


@functools.cache
def _temporary_server():
    """The process's one temporary Prefect server (started by the first :func:`_flow_context` that needs it)."""
    from flows.prefect_server import TemporaryServer

    return TemporaryServer()


def _warm_up(settings, *, campaign: bool = True, simulate: bool = False) -> None:
    """What a first flow run needs besides Prefect, done while Prefect's server starts: the round's imports, the
    model's features and, for a ``campaign``, the label store and the MLflow store (both created on first use) and
    the round's plots (matplotlib's import and first draw).

    The dataset is imported first, before the heavy imports (for a ``simulate`` campaign: checked to have every
    training label): a file that cannot be used fails the command quickly, before it creates a workspace.
    """
    from flows.campaign_setup import model_feature_store, open_label_store

    _import_dataset(settings, simulate=simulate)  # first: a file that cannot be used fails in a second or two
    if settings.families & {"laplace", "vi"}:  # may build torch.optim optimisers, which import torch._dynamo (1.5 s)
        import torch._dynamo  # noqa: F401

    from flows.plots import warm_up as warm_up_plots
    from flows.rounds import labeling_round  # noqa: F401  (torch, MLflow, the models)
    from flows.tracking import tracking_client

    model_feature_store(settings, simulate=simulate)
    if campaign:
        open_label_store(settings).close()  # creates the label store
        tracking_client(settings.tracking_uri)
        warm_up_plots()  # last: the server's start usually outlasts the rest by more than this takes


def _import_dataset(settings, *, simulate: bool = False) -> None:
    """The dataset in the workspace's feature store (``ensure_feature_store``), with a progress bar on a terminal (a
    log line elsewhere) while a folder of images is read: thousands of photos take minutes."""
    from flows.campaign_setup import ensure_feature_store, feature_store_dir

    folder = Path(settings.dataset.name).expanduser()
    if not folder.is_dir() or (feature_store_dir(settings) / "meta.json").exists():
        ensure_feature_store(settings, simulate=simulate)
        return
    from flows.console import console
    from flows.progress import RoundProgress

    bars = RoundProgress(console, logging.getLogger(__name__))
    with bars.shown(), bars.step(f"read {folder.resolve().name}/", 0, "images") as step:
        ensure_feature_store(settings, simulate=simulate, progress=step.part())


def _settings(params: Path | None, overrides: dict[str, Any]):
    from flows.settings import load_settings

    return load_settings(params, overrides)


def _open_campaign(params: Path | None, workspace: Path | None, campaign: str | None):
    """Settings, the label store and the campaign a command acts on (the only one in the workspace if unnamed).

    The workspace and its label store must exist: a command that acts on a campaign creates neither.
    """
    settings = _settings(params, {"workspace": workspace, "campaign": {"name": campaign}})
    _check_workspace(settings.workspace)
    from data.store import sqlite_file
    from flows.campaign_setup import open_label_store

    path = sqlite_file(settings.store_url)
    if path is not None and not path.exists():
        raise CommandError(f"no label store {path}: start a campaign first (beliefloop round or simulate)")
    store = open_label_store(settings)
    return settings, store, _resolve_campaign(settings, store, campaign)


def _check_workspace(workspace: Path) -> None:
    if not workspace.is_dir():
        raise CommandError(f"workspace {workspace} does not exist: start a campaign (beliefloop round or simulate)")


def _resolve_campaign(settings, store, campaign: str | None) -> str:
    if campaign:
        return settings.campaign.name  # the flag, validated
    names = store.campaign_names()
    if len(names) == 1:
        return names[0]
    if settings.campaign.name:
        return settings.campaign.name
    raise typer.BadParameter(f"the workspace holds campaigns {names}; name one with --campaign")


@app.command()
def simulate(
    dataset: DatasetOpt = None,
    label_column: LabelColumnOpt = None,
    id_column: IdColumnOpt = None,
    text_column: TextColumnOpt = None,
    classes: ClassesOpt = None,
    test_fraction: TestFractionOpt = None,
    image_size: ImageSizeOpt = None,
    rounds: Annotated[int | None, typer.Option(help="Number of rounds (default: 10).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Items queued per round (default: 10).")] = None,
    initial: Annotated[int | None, typer.Option(help="Class-balanced initial labeled set size (default: 20).")] = None,
    acquisition: AcquisitionOpt = None,
    samples: Annotated[int | None, typer.Option(help="Posterior samples S per item (default: 100).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the seed set, training and acquisition (default: 0).")
    ] = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    pool_subsample: SubsampleOpt = None,
    shards: ShardsOpt = None,
    dask_address: DaskOpt = None,
    stop_when_stable: StopWhenStableOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write per-round metrics as a JSON list.")] = None,
    summary_path: Annotated[
        Path | None, typer.Option("--summary", help="Write final and mean metrics as one JSON object (DVC metrics).")
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Run a simulated campaign: an oracle answers the queue from held-back labels.

    It ends after --rounds, or with --stop-when-stable at the first stable round ("When to stop" in the README)."""
    overrides = {
        "workspace": workspace,
        "dataset": _dataset_overrides(
            dataset, label_column, id_column, classes, test_fraction, text_column, image_size
        ),
        "campaign": {"name": campaign, "rounds": rounds, "k": k, "initial": initial, "seed": seed},
        "acquisition": {
            "name": acquisition,
            "samples": samples,
            "pool_subsample": pool_subsample,
            "shards": shards,
            "dask_address": dask_address,
        },
        "stopping": _stopping_overrides(stop_when_stable),
    }
    settings = _dataset_settings(params, overrides)
    from flows.console import console, print_header

    console.print(
        f"campaign [bold]{settings.campaign_name}[/]: {settings.dataset.name}, "
        f"{settings.campaign.rounds} round{'' if settings.campaign.rounds == 1 else 's'}, "
        f"k={settings.campaign.k}, {settings.acquisition.name}, S={settings.acquisition.samples}, "
        f"{settings.model.family}"
    )
    with _flow_context(meanwhile=functools.partial(_warm_up, settings, simulate=True)):
        from flows.rounds import simulate_campaign

        print_header()  # once the dataset is known to be usable
        results = simulate_campaign(settings, progress=True)
    if json_path:
        _write_json(json_path, _same_keys(results))
    if summary_path:
        _write_json(summary_path, campaign_summary(results))
    _print_ui_hint(settings.workspace)


def _live_settings(params: Path | None, overrides: dict[str, Any]):
    """Settings of a live campaign, which is named after its dataset unless named (``overrides`` gets the name).
    With no dataset given (flag, environment or params file), the campaign named (else the workspace's only one)
    gives it: a round that forgot ``--dataset`` goes on with that campaign instead of starting one on the bundled
    default."""
    settings = _settings(params, overrides)
    if "name" not in settings.dataset.model_fields_set:
        found = _workspace_campaign(settings)
        if found is not None:
            overrides["campaign"]["name"], overrides["dataset"]["name"] = found
            settings = _settings(params, overrides)
    if not settings.campaign.name:
        from flows.settings import dataset_slug

        overrides["campaign"]["name"] = dataset_slug(settings.dataset.name)
        settings = _settings(params, overrides)
    return settings


@contextmanager
def _existing_store(settings):
    """The workspace's label store (closed after), or ``None`` when it has none yet (a SQLite file not created)."""
    from data.store import sqlite_file

    path = sqlite_file(settings.store_url)
    if path is not None and not path.exists():
        yield None
        return
    from flows.campaign_setup import open_label_store

    store = open_label_store(settings)
    try:
        yield store
    finally:
        store.close()


def _workspace_campaign(settings) -> tuple[str, str] | None:
    """The campaign ``settings`` names (else the workspace's only one) and the dataset it was created with; ``None``
    for a workspace without a label store or campaigns, or when the named campaign does not exist yet."""
    with _existing_store(settings) as store:
        names = [] if store is None else store.campaign_names()
        if not settings.campaign.name and len(names) > 1:
            raise CommandError(f"the workspace holds campaigns {names}: name one with --campaign, or give --dataset")
        campaign = settings.campaign.name or (names[0] if names else None)
        return (campaign, store.dataset_of(campaign)) if campaign in names else None


def _dataset_settings(params: Path | None, overrides: dict[str, Any]):
    """Settings where, with no dataset given (flag, environment or params file), the workspace's campaigns give it
    (:func:`_workspace_dataset`): ``simulate``, ``select`` and ``prepare`` on a workspace work on its data."""
    settings = _settings(params, overrides)
    if "name" not in settings.dataset.model_fields_set and (found := _workspace_dataset(settings)) is not None:
        overrides["dataset"]["name"] = found
        settings = _settings(params, overrides)
    return settings


def _workspace_dataset(settings) -> str | None:
    """The dataset of the campaign ``settings`` names if it exists, else the one every campaign of the workspace
    uses; ``None`` without campaigns. Campaigns on several datasets and none named: the user must say which."""
    with _existing_store(settings) as store:
        names = [] if store is None else store.campaign_names()
        if settings.campaign.name in names:
            return store.dataset_of(settings.campaign.name)
        datasets = sorted({store.dataset_of(name) for name in names})
    if len(datasets) > 1:
        raise CommandError(f"the workspace's campaigns use datasets {datasets}: give --dataset (or --campaign)")
    return datasets[0] if datasets else None


def _refuse_simulated(settings) -> None:
    """A simulated campaign's answers come from its oracle: a live round would mix people's into them."""
    campaign = settings.campaign_name
    with _existing_store(settings) as store:
        if store is None or campaign not in store.campaign_names() or not store.simulated(campaign):
            return
        rounds, dataset = len(store.round_metrics(campaign)) + 1, store.dataset_of(campaign)
    from flows.status import simulate_command

    raise CommandError(
        f"campaign {campaign!r} is simulated (an oracle answers its queue): continue it with "
        f"{simulate_command(campaign, dataset, settings.workspace, rounds)}"
    )


@app.command("round")
def run_round(
    dataset: DatasetOpt = None,
    label_column: LabelColumnOpt = None,
    id_column: IdColumnOpt = None,
    text_column: TextColumnOpt = None,
    classes: ClassesOpt = None,
    test_fraction: TestFractionOpt = None,
    image_size: ImageSizeOpt = None,
    k: Annotated[
        int | None, typer.Option("--k", help="Pending items the round tops the queue up to (default: 10).")
    ] = None,
    acquisition: AcquisitionOpt = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    pool_subsample: SubsampleOpt = None,
    shards: ShardsOpt = None,
    dask_address: DaskOpt = None,
    full_batch: Annotated[
        bool, typer.Option("--full-batch", help="Queue k new items even while items are still pending.")
    ] = False,
    stop_when_stable: StopWhenStableOpt = False,
    params: ParamsOpt = None,
) -> None:
    """Run one live round: ingest answers, train once enough labels exist, top the queue up to k pending items."""
    overrides = {
        "workspace": workspace,
        "dataset": _dataset_overrides(
            dataset, label_column, id_column, classes, test_fraction, text_column, image_size
        ),
        "campaign": {"k": k, "name": campaign},
        "acquisition": {
            "name": acquisition,
            "pool_subsample": pool_subsample,
            "shards": shards,
            "dask_address": dask_address,
        },
        "stopping": _stopping_overrides(stop_when_stable),
    }
    settings = _live_settings(params, overrides)
    _refuse_simulated(settings)
    from flows.campaign_setup import open_label_store, prepare_campaign
    from flows.console import print_header, print_round

    def warm_up() -> None:
        _warm_up(settings)
        prepare_campaign(settings, open_label_store(settings), simulate=False)

    with _flow_context(meanwhile=warm_up):
        from flows.rounds import run_round

        result = run_round(settings, full_batch=full_batch, progress=True)
    print_header()
    print_round(result)
    pending, queued = int(result["n_pending"]), int(result["n_queued"])
    if pending and not full_batch and not result["stopped_when_stable"]:
        typer.echo(
            f"{pending} items were still pending from earlier rounds: topped the queue up to k={settings.campaign.k} "
            f"with {queued} new (--full-batch queues k new items)"
        )
    if pending + queued:
        typer.echo(
            f"{pending + queued} items wait in the queue: beliefloop queue list --workspace {settings.workspace}"
        )


@app.command()
def serve(
    dataset: DatasetOpt = None,
    label_column: LabelColumnOpt = None,
    id_column: IdColumnOpt = None,
    text_column: TextColumnOpt = None,
    classes: ClassesOpt = None,
    test_fraction: TestFractionOpt = None,
    image_size: ImageSizeOpt = None,
    interval: Annotated[float | None, typer.Option(help="Run a round every this many seconds.")] = None,
    cron: Annotated[str | None, typer.Option(help='Run rounds on a cron schedule, e.g. "0 9 * * 1-5".')] = None,
    force: Annotated[bool, typer.Option(help="Run every scheduled round, even without new answers.")] = False,
    k: Annotated[int | None, typer.Option("--k", help="Items queued per round (default: 10).")] = None,
    acquisition: AcquisitionOpt = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    stop_when_stable: StopWhenStableOpt = False,
    params: ParamsOpt = None,
) -> None:
    """Serve the live round as a Prefect deployment on a schedule (needs a Prefect server: PREFECT_API_URL)."""
    if (interval is None) == (cron is None):
        raise CommandError("give one schedule: --interval SECONDS or --cron EXPRESSION")
    overrides = {
        "workspace": workspace,
        "dataset": _dataset_overrides(
            dataset, label_column, id_column, classes, test_fraction, text_column, image_size
        ),
        "campaign": {"k": k, "name": campaign},
        "acquisition": {"name": acquisition},
        "stopping": _stopping_overrides(stop_when_stable),
    }
    settings = _live_settings(params, overrides)
    _refuse_simulated(settings)
    overrides["workspace"] = str(settings.workspace.resolve())  # the runs' processes may start elsewhere
    _prefect_defaults()
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise CommandError(
            "a schedule needs a Prefect server: start one (prefect server start) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    from flows.campaign_setup import model_feature_store
    from flows.schedule import serve_rounds

    model_feature_store(settings)  # a dataset that cannot be used fails here, not in every scheduled run

    schedule = f"every {interval:g} s" if interval is not None else f"cron {cron!r}"
    typer.echo(f"serving {settings.campaign_name}-rounds ({schedule}) on {PREFECT_API_URL.value()}; Ctrl-C stops")
    serve_rounds(settings.campaign_name, overrides, params=params, interval=interval, cron=cron, force=force)


@app.command()
def label(
    item: Annotated[str, typer.Option("--item", help="Item id.")],
    label_: Annotated[str, typer.Option("--label", help="Class name or index.")],
    new_class: Annotated[
        bool,
        typer.Option("--new-class", help="Admit --label as a new class of the campaign (the next round retrains)."),
    ] = False,
    annotator: Annotated[str | None, typer.Option(help="Who answered (default: the current user).")] = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Record one person's answer for a queued item."""
    from data.store import LabelAnswer

    settings, store, name = _open_campaign(params, workspace, campaign)
    classes = store.classes(name)
    index = (
        classes.index(label_)
        if label_ in classes
        else (int(label_) if label_.lstrip("-").isascii() and label_.lstrip("-").isdigit() else None)
    )
    if label_ not in classes and new_class:  # a name, even one that looks like an index
        _check_queued(store, name, item)  # a refused answer adds no class
        from flows.campaign_setup import admit_classes

        classes = admit_classes(settings, store, name, [label_])
        index = classes.index(label_)
        typer.echo(
            f"new class {label_!r} in campaign {name}: classes are now {classes}; the next round trains its "
            f"models with {len(classes)} outputs, from scratch (a saved posterior, for update: belief, has "
            f"{len(classes) - 1})"
        )
    if index is None:
        from flows.queue_io import unknown_class_message

        raise typer.BadParameter(f"{unknown_class_message(label_, classes)} (--new-class admits a new class)")
    report = store.record_labels(name, [LabelAnswer(item, index)], annotator=annotator or getpass.getuser())
    if report.rejected:
        item_id, reason = report.rejected[0]
        typer.echo(f"rejected {item_id}: {reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"recorded {item} = {classes[index]} in campaign {name}")


def _check_queued(store, campaign: str, item: str) -> None:
    """An item the campaign asked people about (what ``record_labels`` requires of an answer)."""
    if item not in {q.item_id for q in store.queued(campaign)}:
        known = item in store.item_rows(campaign)
        reason = "was never queued for labeling" if known else "is an unknown item"
        raise CommandError(f"item {item!r} {reason} in campaign {campaign!r}")


@app.command()
def skip(
    item: Annotated[str, typer.Option("--item", help="Item id.")],
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Mark a pending item as skipped (unanswerable): it leaves the pool and is never queued again."""
    name = _move_in_queue("skip", item, params, workspace, campaign)
    typer.echo(f"skipped {item} in campaign {name}")


@app.command()
def unskip(
    item: Annotated[str, typer.Option("--item", help="Item id.")],
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Undo a skip: the item is pending again and can be labelled."""
    name = _move_in_queue("unskip", item, params, workspace, campaign)
    typer.echo(f"{item} is pending again in campaign {name}")


def _move_in_queue(move: str, item: str, params: Path | None, workspace: Path | None, campaign: str | None) -> str:
    """``LabelStore.skip`` or ``unskip`` of ``item`` in the campaign; returns the campaign's name."""
    _, store, name = _open_campaign(params, workspace, campaign)
    getattr(store, move)(name, item)
    return name


@app.command()
def annotate(
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; any but loopback requires a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the labeling page.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(help="Token every request must carry (default: one generated when binding beyond loopback)."),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Serve a labeling page for the campaign's pending queue (keyboard first; each answer stored at once)."""
    import secrets

    import uvicorn

    from data import open_feature_store
    from flows.annotate import LOOPBACK_HOSTS, create_app
    from flows.campaign_setup import feature_store_dir

    settings, store, name = _open_campaign(params, workspace, campaign)
    features = open_feature_store(feature_store_dir(settings, store.dataset_of(name)))
    if token is None and host not in LOOPBACK_HOSTS:
        token = secrets.token_urlsafe(24)
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    typer.echo(f"labeling page of campaign {name}: {url}  (Ctrl-C stops it)")
    uvicorn.run(create_app(store, name, features, token=token, host=host), host=host, port=port, log_level="warning")


@app.command("ingest")
def ingest_file(
    path: Annotated[
        Path, typer.Argument(help="A .npz, .csv or .parquet file, or a folder of images, of new items, labeled or not.")
    ],
    allow_new_classes: Annotated[
        bool, typer.Option("--allow-new-classes", help="Add label names the campaign does not know as new classes.")
    ] = False,
    id_prefix: Annotated[
        str | None,
        typer.Option("--id-prefix", help="Put before the item ids (default: '<file stem>/' or '<folder>/')."),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Tables: the label column (default: dataset.label_column).")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="Tables: the id column (default: dataset.id_column).")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="Tables: the text column (default: the campaign's).")
    ] = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Add new items to a campaign: train rows join the pool (their labels recorded), test rows the test set."""
    from flows.ingest import ingest

    settings, _, name = _open_campaign(params, workspace, campaign)
    report = ingest(
        settings,
        path,
        campaign=name,
        allow_new_classes=allow_new_classes,
        id_prefix=id_prefix,
        label_column=label_column,
        id_column=id_column,
        text_column=text_column,
    )
    typer.echo(report.summary())
    typer.echo("the next round (beliefloop round) trains on the new labels and scores the new pool items")


@app.command()
def status(
    fmt: Annotated[str, typer.Option("--format", help="text | json (json for scripts).")] = "text",
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """The campaign at a glance: rounds, labels, pending and skipped items, the last round's metrics, the next step."""
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected one of ['text', 'json']")
    from dataclasses import asdict

    from flows.status import campaign_status

    settings, store, name = _open_campaign(params, workspace, campaign)
    s = campaign_status(store, name, settings.workspace)
    if fmt == "json":
        typer.echo(json.dumps(asdict(s), indent=1))
        return
    lines = [
        f"campaign {s.campaign} ({s.dataset}; {len(s.classes)} classes: {', '.join(s.classes)})",
        f"rounds: {s.rounds_done} done" + (f", round {s.unfinished_round} unfinished" if s.unfinished_round else ""),
        f"labels: {s.labels}   pending: {s.pending}   skipped: {s.skipped}   pool left: {s.pool}   "
        f"test items: {s.test_items}",
    ]
    if s.answers_since_last_round is not None:
        lines.append(f"answers since the last round: {s.answers_since_last_round}")
    last = s.last_round
    if last:
        shown = ", ".join(
            f"{key} {value:.0f}" if key.startswith("n_") else f"{key} {value:.3f}"
            for key, value in last.items()
            if key not in ("round", "selected", "warnings", "stopping_note", "stopped_when_stable")
        )
        model = f"; model {last['selected']}" if last["selected"] else ""
        lines.append(f"last round {last['round']}: {shown}{model}")
        lines += [f"  warning: {w}" for w in last["warnings"]]
    lines.append(f"next: {s.next_step}")
    typer.echo("\n".join(lines))


@queue_app.command("list")
def queue_list(
    status: Annotated[str | None, typer.Option(help="pending | labeled | skipped")] = None,
    round_: Annotated[int | None, typer.Option("--round", help="Only this round.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv (json and csv for scripts).")] = "table",
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """List queued items (default: every round, every status)."""
    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected one of ['table', 'json', 'csv']")
    _, store, name = _open_campaign(params, workspace, campaign)
    entries = store.queued(name, round_=round_, status=status)
    if fmt != "table":
        from flows.queue_io import QUEUE_COLUMNS, queue_rows, rows_csv

        rows = queue_rows(entries, store.classes(name))
        typer.echo(json.dumps(rows, indent=1) if fmt == "json" else rows_csv(rows, QUEUE_COLUMNS), nl=fmt == "json")
        return
    from rich.table import Column, Table

    from flows.console import console

    def number(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else "-"

    classes = store.classes(name)
    acquisitions = sorted({q.acquisition for q in entries})
    one = acquisitions[0] if len(acquisitions) == 1 else None  # named once in the header instead of on every row
    item = Column("item", no_wrap=True, min_width=min(max((len(q.item_id) for q in entries), default=4), 40))
    headers = ["round", "rank", item, *(() if one else ("acquisition",)), f"{one} score" if one else "score"]
    table = Table(
        *headers, Column("epi/ale", no_wrap=True), Column("predicted", min_width=8), "status",
        title=f"queue of {name}", box=None, pad_edge=False,
        caption="epi/ale: epistemic (mutual information) / aleatoric (expected entropy); predicted: class (p)",
    )  # fmt: skip
    for q in entries:
        predicted = classes[q.predicted] if q.predicted is not None and q.predicted >= 0 else "-"
        if q.probability is not None:
            predicted += f" ({q.probability:.2f})"
        parts = f"{number(q.epistemic)}/{number(q.aleatoric)}" if q.epistemic is not None else "-"
        acquisition = () if one else (q.acquisition,)
        table.add_row(str(q.round), str(q.rank), q.item_id, *acquisition, number(q.score), parts, predicted, q.status)
    console.print(table)


@queue_app.command("export")
def queue_export(
    fmt: Annotated[str, typer.Option("--format", help="csv | jsonl | label-studio")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="File to write (default: standard output).")] = None,
    status: Annotated[str, typer.Option(help="pending | labeled | skipped")] = "pending",
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Write the queue (default: pending items) for annotators' tools: each item, the model's prediction and score."""
    from data import open_feature_store
    from flows.campaign_setup import feature_store_dir
    from flows.queue_io import EXPORT_FORMATS, export_queue

    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; expected one of {list(EXPORT_FORMATS)}")
    settings, store, name = _open_campaign(params, workspace, campaign)
    features = open_feature_store(feature_store_dir(settings, store.dataset_of(name)))
    entries = store.queued(name, status=status)
    text = export_queue(entries, store.classes(name), features, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"{len(entries)} {status} items of campaign {name} written to {out}", err=True)


@queue_app.command("import")
def queue_import(
    path: Annotated[Path, typer.Argument(help="CSV of item_id,label[,annotator] or a Label Studio JSON export.")],
    annotator: Annotated[
        str | None, typer.Option(help="Who answered (default: the file's, else the current user).")
    ] = None,
    workspace: WorkspaceOpt = None,
    campaign: CampaignOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Record a file of answers, matched by item id; report each row as accepted or rejected (with why)."""
    from flows.queue_io import ImportFileError, import_answers, read_answers

    _, store, name = _open_campaign(params, workspace, campaign)
    try:
        rows = read_answers(path, store.classes(name), annotator, getpass.getuser())
    except ImportFileError as error:
        raise CommandError(str(error)) from None
    outcomes = import_answers(store, name, rows)
    for o in outcomes:
        typer.echo(f"{o.where} {o.item_id}: {'accepted' if o.accepted else 'rejected'}: {o.detail}", err=not o.accepted)
    n_accepted = sum(o.accepted for o in outcomes)
    typer.echo(f"{n_accepted} accepted, {len(outcomes) - n_accepted} rejected, campaign {name}")
    if n_accepted < len(outcomes):
        raise typer.Exit(1)


def _parse_candidate(text: str) -> dict[str, Any]:
    """``name:key=value,key=value`` → a candidate entry (``h64:hidden=64,depth=1``)."""
    name, _, assignments = text.partition(":")
    entry: dict[str, Any] = {"name": name.strip()}
    for assignment in filter(None, (a.strip() for a in assignments.split(","))):
        key, sep, value = assignment.partition("=")
        if not sep:
            raise typer.BadParameter(f"candidate {text!r}: expected key=value, got {assignment!r}")
        entry[key.strip()] = value.strip()
    return entry


SELECT_NUMBER_COLUMNS = (
    ("log ev", "log_evidence", 2),
    ("log BF", "log_bayes_factor", 2),
    ("val NLL", "validation_nll", 3),
)
"""``beliefloop select``'s optional number columns: header, row key, decimals."""


@app.command()
def select(
    dataset: DatasetOpt = None,
    label_column: LabelColumnOpt = None,
    id_column: IdColumnOpt = None,
    text_column: TextColumnOpt = None,
    classes: ClassesOpt = None,
    test_fraction: TestFractionOpt = None,
    image_size: ImageSizeOpt = None,
    candidate: Annotated[
        list[str] | None,
        typer.Option("--candidate", help="name:key=value,... (repeat); keys of `model`, e.g. h64:hidden=64,depth=1."),
    ] = None,
    labels: Annotated[int | None, typer.Option("--labels", help="Class-balanced subset of N training labels.")] = None,
    structure: Annotated[str | None, typer.Option(help="Laplace evidence structure: full | kfac | diag.")] = None,
    workspace: WorkspaceOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Model selection alone: fit the candidates, print log evidence, log Bayes factors and their reading."""
    selection: dict[str, Any] = {"structure": structure}
    if candidate:
        selection["candidates"] = [_parse_candidate(c) for c in candidate]
    settings = _dataset_settings(
        params,
        {
            "workspace": workspace,
            "dataset": _dataset_overrides(
                dataset, label_column, id_column, classes, test_fraction, text_column, image_size
            ),
            "selection": selection,
        },
    )
    from rich.table import Table

    from flows.console import console

    with _flow_context(meanwhile=functools.partial(_warm_up, settings, campaign=False)):
        from flows.rounds import select_models

        rows = select_models(settings, labels)
    by = "validation NLL" if rows[0]["criterion"] == "validation_nll" else rows[0]["evidence_kind"]
    table = Table(title=f"Model selection on {settings.dataset.name} ({rows[0]['n_test']} test items)")

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    # A column only where some candidate has a value (no Bayes factors under validation NLL, no validation NLL under
    # evidence): empty columns squeezed the others into ellipses on an 80-column terminal.
    optional = [
        (header, key, digits)
        for header, key, digits in SELECT_NUMBER_COLUMNS
        if any(row[key] is not None for row in rows)
    ]
    table.add_column("candidate")
    for header, _, _ in optional:
        table.add_column(header, justify="right")
    table.add_column("Kass–Raftery" if rows[0]["criterion"] == "evidence" else "reading")
    for header in ("test NLL", "test acc", "fit s"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            row["candidate"],
            *(number(row[key], digits) for _, key, digits in optional),
            row["reading"],
            f"{row.get('test_nll', float('nan')):.3f}",
            f"{row.get('test_accuracy', float('nan')):.3f}",
            f"{row['train_seconds']:.2f}",
        )
    console.print(f"Candidates compared by {by}", soft_wrap=True)
    console.print(table)


@app.command()
def prepare(
    dataset: DatasetOpt = None,
    label_column: LabelColumnOpt = None,
    id_column: IdColumnOpt = None,
    text_column: TextColumnOpt = None,
    classes: ClassesOpt = None,
    test_fraction: TestFractionOpt = None,
    image_size: ImageSizeOpt = None,
    workspace: WorkspaceOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Import a dataset into the workspace's feature store, and fit its pool representation (DVC's `prepare` stage)."""
    dataset_flags = _dataset_overrides(
        dataset, label_column, id_column, classes, test_fraction, text_column, image_size
    )
    settings = _dataset_settings(params, {"workspace": workspace, "dataset": dataset_flags})
    from flows.campaign_setup import model_feature_store

    _import_dataset(settings)
    store = model_feature_store(settings)
    typer.echo(f"{store.directory}: {store.n_train} train + {store.n_test} test items, {len(store.classes)} classes")


@app.command()
def doctor(
    workspace: WorkspaceOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what loses nothing: abandoned rounds and runs, stale queue rows, ...")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | json (json for scripts).")] = "table",
    params: ParamsOpt = None,
) -> None:
    """Check a workspace (label store, rounds, MLflow runs, checkpoints, feature stores); exit 1 if problems remain."""
    if fmt not in ("table", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; expected one of ['table', 'json']")
    settings = _settings(params, {"workspace": workspace})
    _check_workspace(settings.workspace)
    from rich.table import Table

    from data.store import sqlite_file
    from flows.campaign_setup import open_label_store
    from flows.console import console
    from flows.doctor import diagnose

    path = sqlite_file(settings.store_url)
    if path is not None and not path.exists():
        raise CommandError(f"no label store {path}: nothing to check")
    _prefect_defaults()  # quiet MLflow
    report = diagnose(settings, open_label_store(settings), repair=repair)
    if fmt == "json":
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(f) for f in report.findings], indent=1))
        raise typer.Exit(1 if report.problems else 0)
    table = Table("check", "subject", "status", "detail", title=f"doctor: {settings.workspace}")
    styles = {"ok": "green", "repaired": "yellow", "problem": "red"}
    for f in report.findings:
        table.add_row(f.check, f.subject, f"[{styles[f.status]}]{f.status}[/]", f.detail)
    console.print(table)
    left = len(report.problems)
    typer.echo(f"{left} problem(s) left" if left else "no problems")
    if left:
        raise typer.Exit(1)


@app.command()
def ui(
    workspace: WorkspaceOpt = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind (another than 127.0.0.1 exposes the UI).")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server processes (MLflow's default is 4).")] = 1,
    params: ParamsOpt = None,
) -> None:
    """Open the MLflow UI on the workspace's tracking store; SIGTERM or Ctrl-C stops the server with it.

    One server process by default: enough for a reviewer, and MLflow's four took ~90 s to start on 2 busy cores."""
    settings = _settings(params, {"workspace": workspace})
    if not settings.tracking.uri:  # the workspace's own tracking store
        _check_workspace(settings.workspace)
    with socket.socket() as probe:  # MLflow's server reports a taken port but still exits 0
        try:
            probe.bind((host, port))
        except OSError as error:
            raise CommandError(f"cannot serve the MLflow UI on {host}:{port}: {error.strerror}") from None
    from data.store import database_url

    typer.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it)")
    from flows.tracking import UI_RUNS_PAGE, tracking_client

    for experiment in tracking_client(settings.tracking_uri).search_experiments():
        if experiment.name != "Default":  # MLflow's own, empty
            page = UI_RUNS_PAGE.format(experiment_id=experiment.experiment_id)
            typer.echo(f"  campaign {experiment.name}: http://{host}:{port}/{page}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", database_url(settings.tracking_uri)]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(command, start_new_session=True)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = server.wait()
    except (KeyboardInterrupt, _Terminated):  # stopped here, not in the handler: wait() holds a lock meanwhile
        code = _stop(server)
    raise typer.Exit(code)


class _Terminated(Exception):
    """SIGTERM arrived."""


def _raise_terminated(*_) -> None:
    raise _Terminated


def _stop(server: subprocess.Popen) -> int:
    """Stop the MLflow server and the workers it started (its own process group); returns its exit status."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        return server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        return server.wait()
    except ProcessLookupError:  # already gone
        return server.wait()


def campaign_summary(results: list[dict[str, float]]) -> dict[str, float]:
    """Final-round metrics plus the mean test accuracy over rounds (the area under the learning curve)."""
    final = results[-1]
    summary = {key: final[key] for key in ("n_labeled", "test_accuracy", "test_nll", "test_ece") if key in final}
    accuracies = [r["test_accuracy"] for r in results if "test_accuracy" in r]
    if accuracies:
        summary["mean_test_accuracy"] = sum(accuracies) / len(accuracies)
    summary["rounds"] = len(results)
    return summary


def _same_keys(rows: list[dict]) -> list[dict]:
    """Every row with every row's keys (``None`` where a round has no such value: round 1 has no stop-set agreement,
    a round without a model no training time): DVC's plots read a list of rows only when their keys agree."""
    keys = dict.fromkeys(key for row in rows for key in row)
    return [{key: row.get(key) for key in keys} for row in rows]


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _print_ui_hint(workspace: Path) -> None:
    typer.echo(f"\nResults: beliefloop ui --workspace {workspace}   (MLflow UI at http://127.0.0.1:5000)")
