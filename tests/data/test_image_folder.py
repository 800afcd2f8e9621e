"""Folders of image files: labels from class folders, ids from paths, pixels as the files hold them."""

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, load_dataset
from data.image_folder import read_image_folder


def _save(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return array


def _grey(seed, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_class_folders_label_images_and_the_folder_itself_holds_the_pool(tmp_path):
    root = tmp_path / "scans"
    written = {
        "10/a.png": _save(root / "10" / "a.png", _grey(0)),
        "2/deeper/b.png": _save(root / "2" / "deeper" / "b.png", _grey(1)),
        "2/c.png": _save(root / "2" / "c.png", _grey(2)),
        "u.png": _save(root / "u.png", _grey(3)),
    }
    (root / "7").mkdir()  # an empty class folder: a class no image has yet
    (root / "README.md").write_text("notes beside the images are ignored")
    (root / ".DS_Store").write_bytes(b"\0")

    folder = read_image_folder(root)
    assert folder.ids.tolist() == ["10/a.png", "2/c.png", "2/deeper/b.png", "u.png"]  # path order
    assert folder.labels.tolist() == ["10", "2", "2", ""]
    assert folder.classes == ("2", "7", "10") and folder.is_test is None  # numeric order for integer names
    assert folder.pixels.dtype == np.uint8 and folder.pixels.shape == (4, 1, 6, 5)
    for item, pixels in zip(folder.ids.tolist(), folder.pixels, strict=True):
        np.testing.assert_array_equal(pixels[0], written[item])

    dataset = load_dataset(root, test_fraction=0.5)
    assert dataset.classes == ("2", "7", "10") and dataset.name == "scans"
    assert dataset.ids_test.tolist() == ["2/c.png"] or dataset.ids_test.tolist() == ["2/deeper/b.png"]
    assert "u.png" in dataset.ids_train.tolist() and int((dataset.y_train < 0).sum()) == 1
    row = dataset.ids_train.tolist().index("u.png")
    np.testing.assert_allclose(dataset.x_train[row, 0], written["u.png"] / 255.0, atol=1e-7)


def test_train_and_test_folders_fix_the_split(tmp_path):
    root = tmp_path / "photos"
    _save(root / "train" / "cat" / "1.png", _grey(0))
    _save(root / "train" / "2.png", _grey(1))
    _save(root / "test" / "dog" / "3.png", _grey(2))
    dataset = load_dataset(root, classes=["cat", "dog", "bird"])
    assert dataset.ids_train.tolist() == ["train/2.png", "train/cat/1.png"]
    assert dataset.y_train.tolist() == [-1, 0]
    assert dataset.ids_test.tolist() == ["test/dog/3.png"] and dataset.y_test.tolist() == [1]
    assert dataset.classes == ("cat", "dog", "bird")  # declared: their order, and more than the folders show

    with pytest.raises(DatasetError, match=r"class folder 'dog' is not among the declared classes \['cat'\]"):
        load_dataset(root, classes=["cat"])
    _save(root / "test" / "4.png", _grey(3))
    with pytest.raises(DatasetError, match=r"test image 'test/4.png' is not in a class folder"):
        load_dataset(root)
    (root / "test" / "4.png").unlink()
    _save(root / "5.png", _grey(4))
    with pytest.raises(DatasetError, match=r"'5.png' sits beside train/ and test/"):
        load_dataset(root)


def test_one_colour_image_makes_every_image_rgb_and_transparency_is_laid_on_white(tmp_path):
    root = tmp_path / "mixed"
    grey = _save(root / "a" / "grey.png", _grey(0, (3, 4)))
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, opaque in the first row only
    rgba[0, :, 3] = 255
    _save(root / "b" / "rgba.png", rgba)
    folder = read_image_folder(root)
    assert folder.pixels.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(folder.pixels[0], np.stack([grey] * 3))  # grey repeated in R, G and B
    assert folder.pixels[1, :, 0].T.tolist() == [[200, 0, 0]] * 4  # opaque red
    assert folder.pixels[1, :, 1:].min() == 255  # transparent: white
    assert read_image_folder(root, channels=1).pixels.shape == (2, 1, 3, 4)  # e.g. a grey campaign's ingest


def test_sixteen_bit_images_keep_their_depth(tmp_path):
    root = tmp_path / "deep"
    deep = np.array([[0, 1000, 40000], [65535, 3, 32768]], dtype=np.uint16)
    _save(root / "a" / "deep.png", deep)
    _save(root / "a" / "shallow.png", np.array([[0, 255, 128], [1, 2, 3]], dtype=np.uint8))
    pixels = read_image_folder(root).pixels
    assert pixels.dtype == np.float32  # one deep image: every image as floats in [0, 1]
    np.testing.assert_allclose(pixels[0, 0], deep / 65535.0, atol=1e-7)
    np.testing.assert_allclose(pixels[1, 0], np.array([[0, 255, 128], [1, 2, 3]]) / 255.0, atol=1e-7)


def test_a_photos_exif_orientation_is_applied(tmp_path):
    root = tmp_path / "phone"
    wide = np.zeros((16, 32, 3), dtype=np.uint8)
    wide[:, 16:] = 255  # dark left half, light right half, stored 16 high and 32 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise, as a phone held upright records it
    _save(root / "a" / "photo.jpg", wide, exif=exif, quality=95)
    pixels = read_image_folder(root).pixels
    assert pixels.shape == (1, 3, 32, 16)  # as displayed: 32 high, 16 wide
    top, bottom = pixels[0, :, 2:14].mean(), pixels[0, :, 18:30].mean()  # the dark half on top after the turn
    assert top < 20 and bottom > 235


def test_images_of_several_sizes_need_a_size_and_are_resized_to_it(tmp_path):
    root = tmp_path / "sizes"
    _save(root / "a" / "small.png", np.full((10, 20), 90, dtype=np.uint8))
    _save(root / "a" / "large.png", np.full((40, 30), 90, dtype=np.uint8))
    with pytest.raises(DatasetError) as refused:
        read_image_folder(root)
    message = str(refused.value)
    assert "'a/large.png' is 40 × 30 but 'a/small.png' is 10 × 20 (height × width)" in message
    assert "--image-size" in message
    pixels = read_image_folder(root, size=(12, 16)).pixels
    assert pixels.shape == (2, 1, 12, 16) and np.all(pixels == 90)  # a flat image stays flat whatever the scale


def test_a_resized_ramp_keeps_its_mean_and_order(tmp_path):
    root = tmp_path / "ramp"
    ramp = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (8, 1))
    _save(root / "a" / "ramp.png", ramp)
    _save(root / "a" / "other.png", np.zeros((4, 4), dtype=np.uint8))
    folder = read_image_folder(root, size=(8, 16))
    pixels = folder.pixels[folder.ids.tolist().index("a/ramp.png"), 0].astype(np.float64)
    # Downscaling by 4 with an antialiasing filter: each output pixel is a weighted mean of its 4 inputs and
    # their neighbours, so a linear ramp stays increasing and its mean stays 127.5 (to rounding, edges aside).
    assert np.all(np.diff(pixels[0]) > 0)
    assert abs(pixels.mean() - ramp.mean()) < 1.5


def test_files_that_are_not_images_or_do_not_decode_are_refused_by_name(tmp_path):
    root = tmp_path / "bad"
    _save(root / "a" / "fine.png", _grey(0))
    (root / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"'a/notes.txt' is not an image file"):
        read_image_folder(root)
    (root / "a" / "notes.txt").unlink()
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"cannot read image 'a/broken.png'"):
        read_image_folder(root)
    (root / "a" / "broken.png").unlink()
    good = (root / "a" / "fine.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])  # its header reads, its pixels do not
    with pytest.raises(DatasetError, match=r"cannot read image 'a/truncated.png'"):
        read_image_folder(root)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no images \(.png"):
        read_image_folder(empty)


def test_columns_and_image_options_apply_where_they_mean_something(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "a" / "x.png", _grey(0))
    with pytest.raises(DatasetError, match="apply to CSV and Parquet tables only"):
        load_dataset(root, label_column="label")
    table = tmp_path / "t.csv"
    table.write_text("f,label\n1,a\n2,b\n3,a\n4,b\n")
    with pytest.raises(DatasetError, match="apply to folders of images only"):
        load_dataset(table, label_column="label", image_size=(8, 8))


def test_a_folder_without_class_folders_is_all_pool(tmp_path):
    root = tmp_path / "batch"  # new unlabelled images for a campaign (beliefloop ingest)
    _save(root / "a.png", _grey(0))
    _save(root / "b.png", _grey(1))
    dataset = load_dataset(root, test_fraction=0.0, allow_empty_test=True)
    assert dataset.y_train.tolist() == [-1, -1] and len(dataset.x_test) == 0 and dataset.classes == ()


def test_progress_is_told_the_images_decoded(tmp_path):
    root = tmp_path / "many"
    for i in range(300):
        _save(root / "a" / f"{i:03d}.png", _grey(i, (2, 2)))
    calls = []
    read_image_folder(root, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 300), (256, 300), (300, 300)]


def test_a_linked_folder_that_leads_back_up_is_refused(tmp_path):
    root = tmp_path / "linked"
    _save(root / "a" / "x.png", _grey(0))
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"'a/again' links back to a folder above it"):
        read_image_folder(root)
    (root / "a" / "again").unlink()
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # a linked class folder is read as any other
    assert read_image_folder(root).ids.tolist() == ["a/x.png", "b/x.png"]
