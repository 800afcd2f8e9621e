"""Bayes-factor table and the Kass–Raftery reading."""

import math

import pytest

from bayes_models.selection import bayes_factor_table, kass_raftery


@pytest.mark.parametrize(
    ("log_bf", "reading"),
    [
        (0.0, "barely worth mentioning"),
        (0.99, "barely worth mentioning"),
        (1.0, "positive"),
        (2.99, "positive"),
        (3.0, "strong"),
        (4.99, "strong"),
        (5.0, "very strong"),
        (-6.0, "very strong"),
    ],
)
def test_kass_raftery_thresholds_on_two_ln_bf(log_bf, reading):
    assert kass_raftery(log_bf) == reading


def test_table_selects_highest_and_reports_differences():
    table = bayes_factor_table({"small": -120.5, "wide": -100.0, "deep": -101.5})
    assert [row.candidate for row in table] == ["wide", "deep", "small"]
    assert table[0].selected and table[0].log_bayes_factor == 0.0
    assert table[1].log_bayes_factor == pytest.approx(1.5, abs=1e-12)
    assert table[1].reading == "positive"
    assert table[2].log_bayes_factor == pytest.approx(20.5, abs=1e-12)
    assert table[2].reading == "very strong"


def test_ties_keep_user_order_and_bad_values_are_named():
    assert bayes_factor_table({"a": -1.0, "b": -1.0})[0].candidate == "a"
    with pytest.raises(ValueError, match=r"\['b'\]"):
        bayes_factor_table({"a": -1.0, "b": math.nan})


def test_validation_table_ranks_by_lowest_nll_and_compares_no_evidence():
    from bayes_models.selection import validation_table

    table = validation_table({"ens": 0.41, "small": 0.52, "wide": 0.41}, {"ens": None, "small": -80.0, "wide": -70.0})
    assert [row.candidate for row in table] == ["ens", "wide", "small"]  # a tie keeps the user's order
    assert [row.selected for row in table] == [True, False, False]
    assert all(row.criterion == "validation_nll" and row.log_bayes_factor is None for row in table)
    assert [row.log_evidence for row in table] == [None, -70.0, -80.0]
    assert table[2].reading == "validation NLL +0.11 nats/item"
    with pytest.raises(ValueError, match=r"\['ens'\]"):
        validation_table({"ens": math.inf, "small": 0.5})
