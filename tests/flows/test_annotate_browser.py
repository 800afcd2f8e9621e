"""The labeling page in a real browser (Debian's Chromium through Playwright), then a round ingests the answers."""

from pathlib import Path

from data.store import LabelStore


def test_label_by_click_and_key_skip_undo_then_a_round_ingests_exactly_those(
    chromium_launch, queued_workspace, serve_annotate, beliefloop, tmp_path
):
    from playwright import sync_api

    store = LabelStore.for_workspace(queued_workspace)
    pending = [q.item_id for q in store.queued("digits8", status="pending")]
    before = store.current_labels("digits8")
    url, _ = serve_annotate(queued_workspace)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch)
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(url)

        def shows(item_id: str) -> None:
            page.wait_for_function("id => document.getElementById('card').dataset.itemId === id", arg=item_id)

        shows(pending[0])
        page.fill("#name", "ada")
        page.click("#name-form button")
        page.keyboard.press("ArrowRight")  # the arrows move between pending items without answering
        shows(pending[1])
        page.keyboard.press("ArrowLeft")
        shows(pending[0])
        for item_id, label in zip(pending[:3], (4, 0, 9), strict=True):  # three answers by click
            shows(item_id)
            page.click(f"#card button[data-label='{label}']")
        shows(pending[3])
        page.keyboard.press("3")  # class index 2
        shows(pending[4])
        page.keyboard.press("u")  # withdraws the keyboard answer: the item is asked again
        shows(pending[3])
        page.keyboard.press("s")
        shows(pending[4])
        assert "4 of 8" in page.text_content(".progress")
        page.reload()  # the name is asked once and kept
        assert page.text_content("#annotator") == "ada" and page.is_hidden("#name-form")
        page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)
        browser.close()

    answers = {pending[0]: 4, pending[1]: 0, pending[2]: 9}
    current = store.current_labels("digits8")
    assert {i: label for i, label in current.items() if i not in before} == answers
    assert store.answers_by("digits8", "ada") == {*answers.items(), (pending[3], 2)}
    assert store.label_history("digits8", pending[3]) == [(2, "ada", 1)]  # withdrawn, kept in history
    assert [q.status for q in store.queued("digits8", round_=1)][:5] == ["labeled"] * 3 + ["skipped", "pending"]

    dataset = Path(store.dataset_of("digits8"))
    params = dataset.with_name("params.yaml")
    beliefloop("round", "--dataset", str(dataset), "--workspace", str(queued_workspace), "--params", str(params))
    first_round, second_round = store.round_metrics("digits8")
    assert second_round["n_labeled"] == first_round["n_labeled"] + 3
