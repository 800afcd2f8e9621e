"""``model.prior_from``: a checkpoint file, or a workspace holding the saved posterior of a same-named candidate."""

import pytest

from flows.models import prior_checkpoint


def test_prior_from_resolves_a_file_or_a_workspace_and_names_what_is_missing(tmp_path):
    saved = tmp_path / "w" / "models" / "camp-a" / "candidates" / "h64.pt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    assert prior_checkpoint(saved, "anything") == saved
    assert prior_checkpoint(tmp_path / "w", "h64") == saved
    with pytest.raises(ValueError, match=r"no saved posterior of candidate 'h128' \(models/\*/candidates/h128\.pt\)"):
        prior_checkpoint(tmp_path / "w", "h128")
    other = tmp_path / "w" / "models" / "camp-b" / "candidates" / "h64.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 saved posteriors .* name the checkpoint file"):
        prior_checkpoint(tmp_path / "w", "h64")
    with pytest.raises(ValueError, match="no such checkpoint file or workspace"):
        prior_checkpoint(tmp_path / "nowhere", "h64")
