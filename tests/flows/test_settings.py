"""Settings: defaults < params.yaml < BELIEFLOOP_* environment < CLI overrides; unknown keys are named."""

import pytest

from flows.settings import SettingsError, load_settings


def test_layers_override_in_order(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("campaign:\n  k: 7\n  rounds: 4\nacquisition:\n  name: random\n")
    monkeypatch.setenv("BELIEFLOOP_CAMPAIGN__ROUNDS", "6")
    settings = load_settings(params, {"campaign": {"seed": 3, "k": None}})
    assert settings.campaign.k == 7  # from the file; a None flag means "not given"
    assert settings.campaign.rounds == 6  # environment beats the file
    assert settings.campaign.seed == 3  # CLI
    assert settings.acquisition.name == "random"
    assert settings.model.steps == 500  # default
    assert settings.campaign_name == "digits-random-seed3"
    assert settings.store_url.endswith("workspace/labels.db")


def test_unknown_key_is_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("campaign:\n  rouns: 4\n")
    with pytest.raises(SettingsError, match=r"campaign\.rouns.*Extra inputs"):
        load_settings(params)


def test_unknown_acquisition_lists_valid_names():
    with pytest.raises(SettingsError, match=r"unknown acquisition 'bold'.*bald"):
        load_settings(None, {"acquisition": {"name": "bold"}})


def test_unreadable_params_file_is_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("- a list\n")
    with pytest.raises(SettingsError, match=r"params\.yaml: expected a mapping"):
        load_settings(params)


def test_repository_params_file_states_the_defaults():
    from pathlib import Path

    settings = load_settings(Path(__file__).resolve().parents[2] / "params.yaml")
    assert settings == load_settings(None)
    assert len(settings.selection.candidates) >= 3


def test_belief_updates_need_a_family_with_a_posterior():
    with pytest.raises(SettingsError, match=r"belief.*\['mc_dropout'\]"):
        load_settings(None, {"update": "belief"})
    settings = load_settings(None, {"update": "belief", "model": {"family": "laplace"}})
    assert settings.update == "belief"


def test_candidates_override_model_keys():
    from flows.models import candidate_specs

    specs = candidate_specs(load_settings(None, {"model": {"steps": 7}}))
    assert [(s.name, s.model.hidden, s.model.depth, s.model.steps) for s in specs] == [
        ("h64-d1", 64, 1, 7),
        ("h128-d2", 128, 2, 7),
        ("h256-d2", 256, 2, 7),
    ]


@pytest.mark.parametrize("name", ["../../../escaped", "a/b", ".hidden", "", "x" * 101, "tab\\there", "é"])
def test_unsafe_campaign_names_are_refused(name):
    with pytest.raises(SettingsError, match=r"campaign\.name: .*campaign name .* is not allowed"):
        load_settings(None, {"campaign": {"name": name}})


def test_safe_campaign_names_and_derived_names():
    assert load_settings(None, {"campaign": {"name": "lab-2_v1.0"}}).campaign_name == "lab-2_v1.0"
    settings = load_settings(None, {"dataset": {"name": "/data/..my set (v2).csv"}, "campaign": {"seed": 4}})
    assert settings.campaign_name == "my_set__v2_-bald-seed4"
    assert load_settings(None, {"campaign": {"name": settings.campaign_name}}).campaign_name == settings.campaign_name
    with pytest.raises(SettingsError, match=r"campaign\.seed"):
        load_settings(None, {"campaign": {"seed": -1}})


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_workspace_is_refused(monkeypatch, value):
    monkeypatch.setenv("BELIEFLOOP_WORKSPACE", value)
    with pytest.raises(SettingsError, match="workspace must not be empty"):
        load_settings()


def test_acquisition_names_are_the_packages_registry():
    from acquisition import ACQUISITION_FUNCTIONS, BATCH_ACQUISITIONS
    from flows.settings import ACQUISITION_NAMES

    assert sorted(ACQUISITION_NAMES) == sorted([*ACQUISITION_FUNCTIONS, *BATCH_ACQUISITIONS])


def test_reading_settings_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, flows.settings; flows.settings.load_settings(None, {}); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_declared_classes_are_distinct_names(monkeypatch):
    assert load_settings(None, {"dataset": {"classes": [" a", "b "]}}).dataset.classes == ["a", "b"]
    with pytest.raises(SettingsError, match=r"dataset\.classes.*repeated: \['a'\]"):
        load_settings(None, {"dataset": {"classes": ["a", "b", "a"]}})
    with pytest.raises(SettingsError, match=r"dataset\.classes.*non-empty names"):
        load_settings(None, {"dataset": {"classes": ["a", ""]}})
    monkeypatch.setenv("BELIEFLOOP_DATASET__CLASSES", '["x", "y", "z"]')
    assert load_settings().dataset.classes == ["x", "y", "z"]
