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
    assert settings.campaign_name == "my_set__v2_-powerbald-seed4"
    assert load_settings(None, {"campaign": {"name": settings.campaign_name}}).campaign_name == settings.campaign_name
    with pytest.raises(SettingsError, match=r"campaign\.seed"):
        load_settings(None, {"campaign": {"seed": -1}})


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_workspace_is_refused(monkeypatch, value):
    monkeypatch.setenv("BELIEFLOOP_WORKSPACE", value)
    with pytest.raises(SettingsError, match="workspace must not be empty"):
        load_settings()


def test_acquisition_names_are_the_packages_registry():
    from acquisition import ACQUISITION_FUNCTIONS, BATCH_ACQUISITIONS, TARGETED_ACQUISITIONS
    from flows.settings import ACQUISITION_NAMES

    assert sorted(ACQUISITION_NAMES) == sorted([*ACQUISITION_FUNCTIONS, *BATCH_ACQUISITIONS, *TARGETED_ACQUISITIONS])


def test_evidence_conditioning_default_is_the_packages():
    """The settings spell out the default fraction the evidence conditions on (no torch import to read them)."""
    from bayes_models.laplace import CONDITIONED
    from flows.settings import SelectionSettings

    assert SelectionSettings().condition_on == CONDITIONED


def test_reading_settings_does_not_import_torch(fresh_python):
    code = "import sys, flows.settings; flows.settings.load_settings(None, {}); print('torch' in sys.modules)"
    assert fresh_python(code) == "False\n"


def test_stated_priors_reach_each_candidate_and_nonsense_is_refused_by_key(tmp_path):
    from flows.models import candidate_specs

    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {family: vi, prior_precision: 4.0, prior_layer_std: {head: 2.0}}\n"
        "selection:\n  candidates:\n    - {name: gauss}\n"
        "    - {name: mix, prior_mixture: {pi: 0.5, sigma1: 1.0, sigma2: 0.0025}, prior_layer_std: {head.1: 3.0}}\n"
    )
    gauss, mix = candidate_specs(load_settings(params))
    assert gauss.model.stated_stds() == (0.5, (("head", 2.0),)) and gauss.model.prior_mixture is None
    assert mix.model.stated_stds() == (0.5, (("head.1", 3.0),))
    assert mix.model.prior_mixture == {"pi": 0.5, "sigma1": 1.0, "sigma2": 0.0025}

    def refused(overrides, message):
        with pytest.raises(SettingsError, match=message):
            load_settings(None, overrides)

    refused({"model": {"family": "vi", "prior_std": -1.0}}, r"model\.prior_std: Input should be greater than 0")
    refused({"model": {"prior_layer_std": {"head": 0}}}, r"model\.prior_layer_std\.head: Input should be greater")
    refused({"model": {"family": "vi", "prior_mixture": {"pi": 1.5, "sigma1": 1, "sigma2": 0.1}}}, r"prior_mixture\.pi")
    refused({"model": {"family": "vi", "prior_std": 1.0, "prior_precision": 1.0}}, "model: give prior_std or prior")
    refused(
        {"model": {"family": "laplace", "prior_mixture": {"pi": 0.5, "sigma1": 1, "sigma2": 0.1}}},
        r"model: prior_mixture \(the scale mixture\) needs family vi, got 'laplace'",
    )
    refused(
        {
            "model": {"family": "vi", "prior_std": 0.3},
            "selection": {"candidates": [{"name": "d", "family": "ensemble"}]},
        },
        r"selection\.candidates\[d\]: \['prior_std'\] need family laplace or vi, got 'ensemble'",
    )
    refused({"model": {"prior_std": 1.0}}, r"\['prior_std'\] need family laplace or vi, got 'mc_dropout'")
    refused({"model": {"family": "laplace", "prior_from": str(tmp_path / "none")}}, "no such checkpoint file or work")


def test_declared_classes_are_distinct_names(monkeypatch):
    assert load_settings(None, {"dataset": {"classes": [" a", "b "]}}).dataset.classes == ["a", "b"]
    with pytest.raises(SettingsError, match=r"dataset\.classes.*repeated: \['a'\]"):
        load_settings(None, {"dataset": {"classes": ["a", "b", "a"]}})
    with pytest.raises(SettingsError, match=r"dataset\.classes.*non-empty names"):
        load_settings(None, {"dataset": {"classes": ["a", ""]}})
    monkeypatch.setenv("BELIEFLOOP_DATASET__CLASSES", '["x", "y", "z"]')
    assert load_settings().dataset.classes == ["x", "y", "z"]


def test_pool_subsample_is_auto_all_or_a_number_of_items(tmp_path, monkeypatch):
    assert load_settings(None).acquisition.pool_subsample == "auto"
    params = tmp_path / "params.yaml"
    params.write_text("acquisition:\n  pool_subsample: null\n")  # what the whole pool was written as before "all"
    assert load_settings(params).acquisition.pool_subsample == "all"
    monkeypatch.setenv("BELIEFLOOP_ACQUISITION__POOL_SUBSAMPLE", "500")
    assert load_settings(params).acquisition.pool_subsample == 500
    assert load_settings(params, {"acquisition": {"pool_subsample": "all"}}).acquisition.pool_subsample == "all"
    for bad in ("0", "some"):
        with pytest.raises(SettingsError, match=r"acquisition\.pool_subsample.*'auto' or 'all'"):
            load_settings(None, {"acquisition": {"pool_subsample": bad}})


@pytest.mark.parametrize(
    ("given", "size"),
    [(64, (64, 64)), ("64", (64, 64)), ("48x64", (48, 64)), ("48×64", (48, 64)), ([32, 16], (32, 16))],
)
def test_an_image_size_is_a_side_or_height_by_width(given, size):
    assert load_settings(None, {"dataset": {"image_size": given}}).dataset.image_size == size


@pytest.mark.parametrize("given", ["7", "big", "8x8x3", [64, 4]])
def test_an_image_size_that_is_no_size_is_refused(given):
    with pytest.raises(SettingsError, match=r"dataset\.image_size"):
        load_settings(None, {"dataset": {"image_size": given}})


def test_the_image_size_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BELIEFLOOP_DATASET__IMAGE_SIZE", "28")
    assert load_settings(None).dataset.image_size == (28, 28)
