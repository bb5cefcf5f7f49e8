"""Task vit_images, data and scores: exact synthetic masks, the ImageNet-S reader and its bad
input, the metrics on hand-made masks, and SOP around the image ViT summing its parts."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.draw
import torch
from PIL import Image

from cosmo_sop.errors import InputError
from cosmo_sop.models import SumOfParts
from cosmo_sop.models.vit import VisionTransformer
from cosmo_sop.tasks.images import metrics as M
from cosmo_sop.tasks.images.imagenet_s import IGNORE, decode_mask, load_imagenet_s
from cosmo_sop.tasks.images.synthetic import SHAPES, generate

# -- synthetic images -------------------------------------------------------------------------


def test_synthetic_masks_are_exactly_the_painted_object():
    data = generate(60, 6, 32, seed=[7, 1], distractors=True, return_background=True)
    background = data.extra["background"]
    # The object is painted over the background on its mask and nowhere else ...
    differs = (data.images != background).any(axis=1)
    assert np.array_equal(differs, data.masks)
    # ... in one colour, and (over the texture) with a contrast of at least 0.3 in a channel.
    for image, mask in zip(data.images, data.masks):
        assert np.unique(image[:, mask], axis=1).shape[1] == 1
    plain = generate(60, 6, 32, seed=[7, 2], return_background=True)
    for image, mask, under in zip(plain.images, plain.masks, plain.extra["background"]):
        assert np.abs(image[:, mask] - under[:, mask]).max(axis=0).min() >= 0.3 - 1e-6
    assert data.images.dtype == np.float32 and 0 <= data.images.min() <= data.images.max() <= 1
    assert data.masks.any(axis=(1, 2)).all()
    # Wholly inside the image: nothing on the border rows and columns.
    assert not data.masks[:, [0, -1], :].any() and not data.masks[:, :, [0, -1]].any()
    assert np.bincount(data.labels).tolist() == [10] * 6
    # Distractors lie under or beside the object, never in its mask.
    assert not (data.extra["distractor"] & data.masks).any() and data.extra["distractor"].any()


def test_synthetic_shapes_have_their_geometry_and_the_draw_is_seeded():
    data = generate(120, 6, 32, seed=3)
    r = data.extra["size"]
    areas = {
        "disc": np.pi * r**2,
        "square": (1.6 * r) ** 2,
        "triangle": 3 * np.sqrt(3) / 4 * (1.15 * r) ** 2,
        "cross": (8 / 3 - 4 / 9) * r**2,
        "ring": np.pi * (1 - 0.55**2) * r**2,
        "diamond": 2 * (1.1 * r) ** 2,
    }
    for i, (mask, label) in enumerate(zip(data.masks, data.labels)):
        name = SHAPES[label]
        assert abs(mask.sum() - areas[name][i]) < 0.15 * areas[name][i], name
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        if name == "disc":  # the same pixels as scikit-image's disc about the pixel centres
            centre = data.extra["centre"][i] - 0.5
            expected = np.zeros_like(mask)
            expected[skimage.draw.disk(tuple(centre), r[i], shape=mask.shape)] = True
            assert np.array_equal(mask, expected)
        if name == "square":
            assert box.all()  # a filled axis-aligned square
        if name == "ring":
            assert not box[box.shape[0] // 2, box.shape[1] // 2]  # the hole
        if name == "triangle":
            assert box[-1].sum() > box[0].sum()  # pointing up: widest at the bottom
    again = generate(120, 6, 32, seed=3)
    assert np.array_equal(again.images, data.images) and np.array_equal(again.masks, data.masks)
    assert not np.array_equal(generate(120, 6, 32, seed=4).images, data.images)
    with pytest.raises(ValueError, match="n_classes"):
        generate(4, 7, 32, seed=0)
    with pytest.raises(ValueError, match="size_range"):
        generate(4, 2, 32, seed=0, size_range=(0.3, 0.5))


# -- ImageNet-S reader ------------------------------------------------------------------------


def _ids_to_png(ids: np.ndarray, path) -> None:
    """A mask in the ImageNet-S format: id = R + 256 G."""
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)


def _fixture(root, split="validation"):
    """Two classes, three images (JPEG and PNG), masks with an id > 255 and ignored pixels."""
    rng = np.random.default_rng(0)
    expected = {}
    for cls, names in (("n01440764", ["a", "b"]), ("n02102040", ["c"])):
        (root / split / cls).mkdir(parents=True)
        (root / f"{split}-segmentation" / cls).mkdir(parents=True)
        for name in names:
            pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            suffix = ".JPEG" if name != "c" else ".png"
            Image.fromarray(pixels).save(root / split / cls / f"{name}{suffix}")
            ids = np.zeros((30, 40), dtype=np.int64)
            ids[5:20, 8:30] = 300 if cls == "n01440764" else 7
            ids[20:22, 8:30] = IGNORE
            _ids_to_png(ids, root / f"{split}-segmentation" / cls / f"{name}.png")
            expected[name] = (pixels, ids)
    return expected


def test_imagenet_s_reader_decodes_masks_resizes_and_labels_by_folder(tmp_path):
    expected = _fixture(tmp_path)
    data = load_imagenet_s(tmp_path, "validation", 16, progress=False)
    assert data.images.shape == (3, 3, 16, 16) and data.images.dtype == np.float32
    assert data.labels.tolist() == [0, 0, 1]
    assert data.class_names == ("n01440764", "n02102040")
    for i, name in enumerate("abc"):
        pixels, ids = expected[name]
        assert np.array_equal(decode_mask(Image.open(data_path(tmp_path, data.names[i]))), ids)
        near = Image.fromarray(((ids != 0) & (ids != IGNORE)).astype(np.uint8) * 255)
        assert np.array_equal(data.masks[i], np.asarray(near.resize((16, 16), 0)) > 127)
        ignore = Image.fromarray((ids == IGNORE).astype(np.uint8) * 255).resize((16, 16), 0)
        assert np.array_equal(data.extra["ignore"][i], np.asarray(ignore) > 127)
    # PNG images are lossless: the bilinear resize of the original pixels.
    rgb = Image.fromarray(expected["c"][0]).resize((16, 16), Image.Resampling.BILINEAR)
    assert np.allclose(data.images[2], np.asarray(rgb).transpose(2, 0, 1) / 255.0)
    first = load_imagenet_s(tmp_path, "validation", 16, classes=1, progress=False)
    assert first.labels.tolist() == [0, 0]
    bare = load_imagenet_s(tmp_path, "validation", 8, with_masks=False, progress=False)
    assert not bare.masks.any() and "ignore" not in bare.extra


def data_path(root, name: str):
    """The mask of the image at ``root / name``."""
    split, cls, file = name.split("/")
    return root / f"{split}-segmentation" / cls / (file.rsplit(".", 1)[0] + ".png")


def _missing_mask(root):
    (root / "validation-segmentation" / "n01440764" / "b.png").unlink()
    return "b.JPEG"


def _unreadable(root):
    (root / "validation" / "n02102040" / "c.png").write_bytes(b"not an image at all")
    return "c.png"


def _unreadable_mask(root):
    (root / "validation-segmentation" / "n01440764" / "a.png").write_bytes(b"\x89PNG broken")
    return "a.png"


def _size_mismatch(root):
    _ids_to_png(
        np.zeros((10, 10), dtype=np.int64), root / "validation-segmentation" / "n02102040" / "c.png"
    )
    return "c.png"


def _empty(root):
    for path in sorted((root / "validation").rglob("*.*")):
        path.unlink()
    return "validation"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_missing_mask, "no segmentation mask"),
        (_unreadable, "not a readable image"),
        (_unreadable_mask, "not a readable image"),
        (_size_mismatch, "mask is 10x10, its image 40x30"),
        (_empty, "no images"),
    ],
)
def test_imagenet_s_reader_names_the_bad_file(tmp_path, damage, message):
    _fixture(tmp_path)
    name = damage(tmp_path)
    with pytest.raises(InputError, match=message) as error:
        load_imagenet_s(tmp_path, "validation", 16, progress=False)
    assert name in error.value.where
    with pytest.raises(InputError, match="split folder not found"):
        load_imagenet_s(tmp_path, "train-semi", 16, progress=False)


# -- metrics ----------------------------------------------------------------------------------


def test_overlap_scores_on_hand_made_masks():
    objects = np.zeros((3, 8, 8), dtype=bool)
    objects[:, 2:6, 2:6] = True  # 16 pixels
    selected = np.zeros((3, 8, 8), dtype=bool)
    selected[0, 2:4, :] = True  # 16 pixels, 8 on the object
    selected[1, 2:6, 2:6] = True  # exactly the object
    ignore = np.zeros((3, 8, 8), dtype=bool)
    ignore[1, 2:6, 2:4] = True  # half the object ignored: still exact on the rest
    scores = M.overlap(selected, objects, ignore)
    assert scores["purity"][:2].tolist() == [0.5, 1.0]
    assert scores["coverage"][:2].tolist() == [0.5, 1.0]
    assert scores["iou"][:2].tolist() == [8 / 24, 1.0]
    assert scores["selected_fraction"].tolist() == [0.25, 0.25, 0.0]
    # Nothing selected: purity undefined, coverage and IoU 0.
    assert np.isnan(scores["purity"][2]) and scores["coverage"][2] == 0 and scores["iou"][2] == 0


def test_top_group_and_top_fraction():
    masks = np.zeros((2, 3, 4, 4), dtype=bool)
    masks[:, 0, 0] = True
    masks[:, 1, 1] = True
    masks[:, 2, 2] = True
    scores = np.zeros((2, 3, 2))
    scores[:, 2, 0] = 0.9  # group 2 best for class 0 ...
    scores[:, 1, 1] = 0.8  # ... group 1 for class 1
    valid = np.array([[True, True, True], [True, True, False]])
    chosen = M.top_group(masks, scores, valid, np.array([1, 0]))
    assert np.array_equal(chosen[0], masks[0, 1])  # class 1: group 1
    assert np.array_equal(chosen[1], masks[1, 0])  # class 0, group 2 invalid: ties -> group 0
    importance = np.arange(32, dtype=float).reshape(2, 4, 4)
    top = M.top_fraction(importance, 0.25, tie_seed=0)
    assert top.sum((1, 2)).tolist() == [4, 4] and top[:, 3].all()
    flat = M.top_fraction(np.zeros((2, 4, 4)), 0.5, tie_seed=5)
    assert np.array_equal(flat, M.top_fraction(np.zeros((2, 4, 4)), 0.5, tie_seed=5))
    assert flat.sum() == 16 and not np.array_equal(flat[0], np.arange(16).reshape(4, 4) < 8)
    sized = M.top_count(importance, np.array([3, 0]), tie_seed=0)
    assert sized[0].sum() == 3 and sized[0, 3, 1:].all() and not sized[1].any()
    summed = M.sop_importance(masks, scores, np.array([0, 1]))
    assert summed[0, 2, 2] == pytest.approx(0.9) and summed[1, 1, 1] == pytest.approx(0.8)


def test_probability_curves_reward_a_ranking_that_points_at_the_evidence():
    # A "classifier" whose class-1 probability rises with the image's values in the object.
    objects = torch.zeros(4, 8, 8, dtype=torch.bool)
    objects[:, 2:6, 2:6] = True

    def predict(x):
        evidence = (x[:, 0] * objects[0]).sum((1, 2)) / 16.0
        return torch.stack([torch.zeros_like(evidence), 8 * evidence], 1).softmax(-1)

    x = torch.ones(4, 1, 8, 8)
    classes = np.ones(4, dtype=int)
    good = M.probability_curves(predict, x, objects.double(), classes, n_fractions=5)
    bad = M.probability_curves(predict, x, (~objects).double(), classes, n_fractions=5)
    assert good.position.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.allclose(good.insertion[:, 0], 0.5) and np.allclose(
        good.insertion[:, -1], bad.insertion[:, -1]
    )
    assert (good.insertion_auc > bad.insertion_auc).all()
    assert (good.deletion_auc < bad.deletion_auc).all()
    # By patches: whole 4 x 4 patches change, so the steps are multiples of 16 pixels.
    token_map = (torch.arange(8)[:, None] // 4) * 2 + torch.arange(8)[None, :] // 4
    patches = M.probability_curves(
        predict, x, objects.double(), classes, n_fractions=3, token_map=token_map
    )
    assert (patches.position * 64 % 16 == 0).all()


# -- SOP around the image ViT -----------------------------------------------------------------


def test_sop_around_the_image_vit_is_exactly_the_sum_of_its_parts():
    torch.manual_seed(0)
    vit = VisionTransformer(3, 4, 32, patch_size=8, hidden_size=16, layers=2, heads=2, mlp_size=16)
    sop = SumOfParts.from_backbone(
        vit, (3, 32, 32), 1, task="classification", tokens="patches", patch_tokens=vit.grid,
        n_groups=5, keep_fraction=0.25,
    ).eval()  # fmt: skip
    x = torch.from_numpy(generate(3, 4, 32, seed=1).images - 0.5)
    with torch.no_grad():
        parts = sop.explain(x)
        first = vit(x * parts.masks[:, 0, None].float())
    total = (parts.scores * parts.partial).sum(1)
    assert torch.allclose(total, parts.prediction, atol=1e-5)
    assert torch.allclose(parts.partial[:, 0], first, atol=1e-5)
    assert torch.allclose(parts.scores.sum(1), torch.ones(3, 4), atol=1e-5)
    # Every group is a set of whole ViT patches.
    per_patch = parts.masks.float().unflatten(2, (4, 8)).unflatten(4, (4, 8)).mean((3, 5))
    assert set(per_patch.unique().tolist()) <= {0.0, 1.0}
