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


def test_long_column_names_and_values_are_shown_whole(chromium_launch, serve_annotate, tmp_path):
    """A spreadsheet's long column names (no spaces to break at) and long category values wrap inside their cells
    instead of running under the next one or being cut off."""
    from playwright import sync_api

    from data.store import QueueEntry
    from flows.campaign_setup import open_label_store, prepare_campaign
    from flows.settings import load_settings

    names = ["worst_fractal_dimension_of_the_nuclei", "mean_concave_points_per_cell", "r"]
    site = "north_eastern_regional_teaching_hospital"
    rows = [f"p{i},{0.1 * i:.3f},{i},{i % 3},{site if i % 2 else 'south'},{'a' if i % 2 else 'b'}" for i in range(12)]
    path = tmp_path / "nuclei.csv"
    path.write_text(f"id,{','.join(names)},clinic,label\n" + "\n".join(rows) + "\n")
    workspace = tmp_path / "w"
    settings = load_settings(
        None,
        {
            "workspace": str(workspace),
            "campaign": {"name": "nuclei"},
            "dataset": {"name": str(path), "label_column": "label", "id_column": "id"},
        },
    )
    store = open_label_store(settings)
    features = prepare_campaign(settings, store, simulate=False)
    item = next(str(i) for i in features.ids if int(str(i)[1:]) % 2)  # a row of the long clinic name
    store.enqueue("nuclei", 1, [QueueEntry(item, 1, 0.3, "bald", 0, 0.8, 0.1, 0.2)])
    url, _ = serve_annotate(workspace)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch)
        page = browser.new_page(viewport={"width": 800, "height": 700})
        page.goto(url)
        page.wait_for_function("id => document.getElementById('card').dataset.itemId === id", arg=item)
        cells = page.eval_on_selector_all(
            ".features dt, .features dd",
            """cells => cells.map(c => {
                const cell = c.getBoundingClientRect(), box = c.parentElement.getBoundingClientRect();
                return {text: c.textContent, overflows: c.scrollWidth > c.clientWidth,
                        outside: cell.right > box.right + 0.5 || cell.left < box.left - 0.5};
            })""",
        )
        browser.close()
    shown = {c["text"] for c in cells}
    assert {*names, "clinic", site} <= shown
    assert [c for c in cells if c["overflows"] or c["outside"]] == []
