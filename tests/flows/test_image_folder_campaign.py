"""A live campaign on a folder of image files through the real CLI: import, queue, label, ingest, train again."""

import base64
import io
import json

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from data import open_feature_store
from data.store import LabelStore

PARAMS = (
    "campaign:\n  min_labels: 10\nmodel:\n  steps: 30\nacquisition:\n  name: bald\n  samples: 4\n"
    "selection:\n  candidates: []\n"
)


def _digit_png(path, image_8_8, side):
    """A digit (0..16) as an 8-bit grey PNG of ``side`` × ``side`` pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.asarray(image_8_8) * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST).save(path)


def test_a_folder_of_images_runs_a_live_campaign(tmp_path, beliefloop):
    digits = load_digits()
    root = tmp_path / "scans"
    for i in range(30):  # labelled, half of them scanned at twice the size
        _digit_png(root / "train" / str(digits.target[i]) / f"{i:03d}.png", digits.images[i], 8 if i % 2 else 16)
    for i in range(30, 40):  # the pool
        _digit_png(root / "train" / f"{i:03d}.png", digits.images[i], 8)
    for i in range(40, 60):
        _digit_png(root / "test" / str(digits.target[i]) / f"{i:03d}.png", digits.images[i], 8)
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    workspace = tmp_path / "w"
    common = ["--workspace", str(workspace), "--params", str(params)]

    refused = beliefloop("round", "--dataset", str(root), "--k", "4", *common, check=False)
    assert refused.returncode == 2 and "images differ in size" in refused.stderr and "--image-size" in refused.stderr
    assert not workspace.exists()  # a dataset that cannot be used leaves no workspace behind

    out = beliefloop("round", "--dataset", str(root), "--image-size", "8", "--k", "4", *common).stdout
    assert "4 items wait in the queue" in out
    features = open_feature_store(workspace / "datasets" / "scans")
    assert features.feature_shape == (1, 8, 8) and features.meta["is_image"]
    row = features.row_of("train/030.png")  # stored as the file holds it, scaled to [0, 1]
    np.testing.assert_allclose(
        features.features[row, 0], (digits.images[30] * 255 / 16).astype(np.uint8) / 255, atol=1e-6
    )

    exported = beliefloop("queue", "export", "--format", "jsonl", "--workspace", str(workspace)).stdout
    lines = [json.loads(line) for line in exported.splitlines()]
    assert len(lines) == 4 and all(line["item_id"].startswith("train/0") for line in lines)
    picture = Image.open(io.BytesIO(base64.b64decode(lines[0]["image"].removeprefix("data:image/png;base64,"))))
    assert picture.size[0] >= 8  # the item people label from, enlarged for a screen

    first = lines[0]["item_id"]
    truth = int(digits.target[int(first.removeprefix("train/").removesuffix(".png"))])
    beliefloop("label", "--item", first, "--label", str(truth), "--workspace", str(workspace))
    store = LabelStore.for_workspace(workspace)
    assert store.current_labels("scans")[first] == truth

    more = tmp_path / "batch2"  # colour scans of another size: made grey and 8 × 8 like the campaign's
    more.mkdir()
    for i in range(60, 66):
        grey = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, axis=-1)).resize((12, 12)).save(more / f"{i:03d}.png")
    ingested = beliefloop("ingest", str(more), "--workspace", str(workspace)).stdout
    assert "6 pool items (0 labels recorded), 0 test items" in ingested
    features = open_feature_store(workspace / "datasets" / "scans")
    assert features.feature_shape == (1, 8, 8) and features.row_of("batch2/060.png") >= 0

    beliefloop("round", "--k", "4", *common)  # goes on with the campaign's folder, trains on the 16 labels
    (queued,) = store.queued("scans", round_=2)  # topped up to 4 beside the 3 still pending
    assert queued.acquisition == "bald" and queued.predicted is not None
    pool = {f"train/{i:03d}.png" for i in range(30, 40)} | {f"batch2/{i:03d}.png" for i in range(60, 66)}
    assert queued.item_id in pool - {line["item_id"] for line in lines}
