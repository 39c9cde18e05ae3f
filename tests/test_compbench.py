"""T2I-CompBench++: prompt readings, the official rules on hand-built detections, the
expert models on tiny random checkpoints (BLIP-VQA's P(yes) against transformers' own
forward pass), the metrics and the benchmark's prompt files. Nothing is downloaded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection_fixtures import compbench_roles, tiny_blip_folder
from metric_fixtures import random_image
from lpo.core.errors import LpoError
from lpo.evals.benchmarks import BENCHMARKS, prompt_hash
from lpo.evals.benchmarks import t2i_compbench as bench
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics import compbench_rules as rules
from lpo.evals.metrics import compbench_text as text
from lpo.evals.metrics.blip_vqa import BlipVqa, official_round, phrase_product, pre_question
from lpo.evals.metrics.compbench import NAMESPACE, CompBenchScorer
from lpo.evals.metrics.detection import MidasDepth, Owlv2Detector, nms, to_unidet_frame
from lpo.evals.metrics.prompt_info import annotate, forget

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def roles(tmp_path_factory) -> Path:
    return compbench_roles(tmp_path_factory.mktemp("compbench-roles"))


@pytest.fixture(autouse=True)
def _clean_annotations():
    forget(NAMESPACE)
    yield
    forget(NAMESPACE)


def box(x0, y0, x1, y1) -> rules.Box:
    return rules.Box(float(x0), float(y0), float(x1), float(y1))


def det(label, score, b) -> rules.Detection:
    return rules.Detection(label, score, b)


# ----------------------------------------------------------------------- prompt text


def test_noun_chunks_on_the_templated_prompts():
    assert text.noun_chunks("a green bench and a blue bowl") == ["a green bench", "a blue bowl"]
    assert text.noun_chunks("an oblong cucumber and a teardrop plum") == ["an oblong cucumber", "a teardrop plum"]
    assert text.noun_chunks("rubber sole shoes and fluffy clouds") == ["rubber sole shoes", "fluffy clouds"]
    assert text.noun_chunks("a triangular slice of cheese and a rectangular cheese board") == [
        "a triangular slice", "cheese", "a rectangular cheese board",
    ]
    assert text.noun_chunks("A bathroom with white tile and a beige toilet.") == ["A bathroom", "white tile", "a beige toilet"]


def test_noun_chunks_on_free_form_captions():
    assert text.noun_chunks("The red hat was on top of the brown coat rack.") == ["The red hat", "top", "the brown coat rack"]
    # adjectives joined by "and" or a comma stay in one phrase; a verb ends a phrase
    assert text.noun_chunks("The white and yellow clock with a red roof reads 11:44.") == ["The white and yellow clock", "a red roof"]
    assert text.noun_chunks("The soft, gentle touch of the therapist's hands") == ["The soft, gentle touch", "the therapist's hands"]
    assert text.noun_chunks("The fresh omelet cooked the fluffy eggs.") == ["The fresh omelet", "the fluffy eggs"]
    assert text.noun_chunks("The dull grey building.") == ["The dull grey building"]  # -ing after an adjective is a noun
    assert text.noun_chunks("The metallic whisk and wooden bowl mix the fluffy batter") == [
        "The metallic whisk", "wooden bowl", "the fluffy batter",
    ]


def test_blip_questions_are_the_official_phrase_questions_capped_at_eight():
    assert text.blip_questions("a green bench and a blue bowl") == ["a green bench?", "a blue bowl?"]
    many = " and ".join(f"a {w}" for w in "cat dog bird car house tree star circle square".split())
    assert len(text.blip_questions(many)) == 8
    assert pre_question('A "Green" bench!?') == "a green bench?"
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


def test_spatial_relations_and_objects():
    assert text.find_relation("a bird on side of a airplane", text.SPATIAL_2D) == "on side of"
    # the official vocabulary order: "on the top of" before "on top of"
    assert text.find_relation("a cat on the top of a sofa", text.SPATIAL_2D) == "on the top of"
    assert text.find_relation("a hat on top of a rack", text.SPATIAL_2D) == "on top of"
    assert text.find_relation("a cat and a dog", text.SPATIAL_2D) is None
    assert text.spatial_objects("a bird on side of a airplane", "on side of") == ("bird", "airplane")
    assert text.spatial_objects("a chair hidden by a mouse", "hidden") == ("chair", "mouse")
    assert text.spatial_objects("A Girl on the left of a Horse.", "on the left of") == ("girl", "horse")
    # the nearest noun before, the first noun after (the compound's first noun, as spaCy tags it)
    assert text.complex_spatial_objects("The red hat was on top of the brown coat rack.") == ("hat", "coat")
    assert text.complex_spatial_objects("The green plant was on the right of the white wall.") == ("plant", "wall")
    assert text.complex_spatial_objects("The white cat is lying on the brown sofa.") is None
    # two prepositions: four objects, which the official parser discards
    assert text.complex_spatial_objects("The cat was near the dog and next to the bird.") is None


def test_numeracy_targets():
    assert text.numeracy_targets("three couches, two keys and one bowl") == [("couch", 3), ("key", 2), ("bowl", 1)]
    assert text.numeracy_targets("a backpack, three apples and a bowl were on the counter") == [
        ("backpack", 1), ("apple", 3), ("bowl", 1),
    ]
    assert text.numeracy_targets("four mice and two sheep") == [("mouse", 4), ("sheep", 2)]
    assert text.numeracy_targets("two unicorns") == []
    objects = (("teddy bear", "teddy bears"), ("bear", "bears"))
    assert text.numeracy_targets("two teddy bears and a bear", objects) == [("teddy bear", 2), ("bear", 1)]


def test_remove_adjectives():
    assert text.remove_adjectives("The sleek black cat sat on the fluffy white pillow.") == "The cat sat on the pillow ."
    assert text.remove_adjectives("a red orange") == "a orange"  # the noun "orange" stays


# --------------------------------------------------------------------------- rules


def test_unidet_frame():
    assert rules.unidet_frame(512, 512) == (479, 479)
    assert rules.unidet_frame(1024, 1024) == (479, 479)
    assert rules.unidet_frame(640, 480) == (480, 360)  # the longer side is capped at 480
    assert rules.unidet_frame(480, 960) == (240, 480)


def test_position_near_relations():
    a = box(0, 0, 10, 10)
    assert rules.position_score("near", a, box(100, 200, 110, 210)) == 1.0  # |dx| < 150
    assert rules.position_score("next to", a, box(300, 400, 310, 410)) == pytest.approx(150 / 400)
    assert rules.position_score("on side of", a, box(160, 0, 170, 10)) == 1.0  # |dy| < 150


@pytest.mark.parametrize(
    "relation, other",
    [("on the left of", box(200, 0, 250, 50)), ("on the right of", box(-250, 0, -200, 50)),
     ("on the top of", box(0, 200, 50, 250)), ("on the bottom of", box(0, -250, 50, -200))],
)
def test_position_directional(relation, other):
    a = box(0, 0, 50, 50)
    assert rules.position_score(relation, a, other) == 1.0
    # overlapping boxes: 0.1 / IoU
    shift = {"on the left of": (20, 0), "on the right of": (-20, 0), "on the top of": (0, 20), "on the bottom of": (0, -20)}[relation]
    overlapping = box(shift[0], shift[1], 50 + shift[0], 50 + shift[1])
    iou = rules.box_iou(a, overlapping)
    assert iou >= 0.1
    assert rules.position_score(relation, a, overlapping) == pytest.approx(0.1 / iou)
    # the wrong side scores 0
    mirrored = box(-other.x_max, -other.y_max, -other.x_min, -other.y_min)
    assert rules.position_score(relation, a, mirrored) == 0.0


def test_position_needs_the_dominant_axis_and_a_known_relation():
    a = box(0, 0, 10, 10)
    diagonal = box(100, 300, 110, 310)  # right of, but mostly below
    assert rules.position_score("on the left of", a, diagonal) == 0.0
    assert rules.position_score("on the top of", a, diagonal) == 1.0
    assert rules.position_score("on top of", a, diagonal) == 0.0  # found by the vocabulary, no rule
    assert rules.position_score(None, a, diagonal) == 0.0


def test_position_depth_relations():
    depth = np.zeros((100, 100), dtype=np.float32)
    a, b = box(10, 10, 50, 50), box(20, 20, 60, 60)  # IoU = 900 / 2300
    iou = rules.box_iou(a, b)
    depth[10:50, 10:50] = 0.9  # (transposed window = same square here) A nearer
    assert 0 < iou < 0.5
    assert rules.position_score("in front of", a, b, depth=depth) == pytest.approx(iou / 0.5)
    assert rules.position_score("behind", a, b, depth=depth) == 0.0
    assert rules.position_score("hidden", b, a, depth=depth) == pytest.approx(iou / 0.5)
    same = box(10, 10, 50, 52)  # IoU > 0.5
    assert rules.box_iou(a, same) > 0.5
    assert rules.position_score("behind", same, a, depth=depth) == 1.0
    assert rules.position_score("in front of", same, a, depth=depth) == 0.0
    apart = box(70, 70, 90, 90)  # IoU 0
    assert rules.position_score("in front of", a, apart, depth=depth) == 0.0
    with pytest.raises(ValueError):
        rules.position_score("behind", a, b)


def test_depth_window_is_transposed_as_upstream():
    """Official: depth[x_min:x_max, y_min:y_max]; with an asymmetric map the two readings differ."""
    depth = np.zeros((100, 100), dtype=np.float32)
    depth[0:20, 60:80] = 1.0  # rows 0-20, columns 60-80
    wide = box(0, 60, 20, 80)  # x 0-20, y 60-80: the transposed window reads rows 0-20, columns 60-80
    other = box(5, 65, 25, 85)
    assert rules.position_score("in front of", wide, other, depth=depth) > 0
    assert rules.position_score("in front of", wide, other, depth=depth, transposed_depth_window=False) == 0.0


def test_spatial_score_formula():
    a, b = box(0, 0, 50, 50), box(300, 0, 350, 50)  # a left of b
    both = [det("cat", 0.9, a), det("dog", 0.8, b), det("cat", 0.3, b)]
    assert rules.spatial_score("on the left of", ("cat", "dog"), both) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    # the most confident detection of each label is used (the list's order)
    assert rules.spatial_score("on the right of", ("cat", "dog"), both) == 0.0  # 0.425 < 0.5 -> 0
    assert rules.spatial_score("on the right of", ("cat", "dog"), both, zero_below_half=False) == pytest.approx(0.425)
    only_cat = [det("cat", 0.9, a)]
    assert rules.spatial_score("on the left of", ("cat", "dog"), only_cat, zero_below_half=False) == pytest.approx(0.225)
    only_dog = [det("dog", 0.8, b)]
    assert rules.spatial_score("on the left of", ("cat", "dog"), only_dog, zero_below_half=False) == pytest.approx(0.2)
    assert rules.spatial_score("on the left of", ("cat", "dog"), [], zero_below_half=False) == 0.0
    assert rules.spatial_score("on the left of", None, both, zero_below_half=False) == 0.0


def test_3d_locates_objects_as_upstreams_3d_script():
    a, b, c, d = box(0, 0, 50, 50), box(300, 0, 350, 50), box(100, 0, 150, 50), box(0, 100, 50, 150)
    detections = [det("dog", 0.9, a), det("dog", 0.6, c), det("cat", 0.8, b), det("cat", 0.5, d)]
    # 2D: each name's first exact match
    assert rules.locate_2d(detections, ("dog", "cat")) == (detections[0], detections[2])
    # 3D: both found, so walk until both have a match; the dog keeps its last match before the cat's first
    assert rules.locate_3d(detections, ("dog", "cat")) == (detections[1], detections[2])
    assert rules.locate_3d(detections, ("cat", "dog")) == (detections[2], detections[1])
    # substring of a label: "dog" is found in "hot dog"; one name found: its first match
    hot = [det("hot dog", 0.7, a), det("hot dog", 0.4, b)]
    assert rules.locate_3d(hot, ("dog", "bird")) == (hot[0], None)
    assert rules.locate_2d(hot, ("dog", "bird")) == (None, None)
    # a name only across two joined labels is not found (upstream fails there)
    assert rules.locate_3d([det("red", 0.9, a), det("panda", 0.8, b)], ("d pan", "panda"))[0] is None
    # the 3D score reads the boxes locate_3d picked: the dog's second box is at x 100-150, not 0-50
    depth = np.zeros((480, 480))
    score_3d = rules.spatial_score("in front of", ("dog", "cat"), detections, depth=depth, zero_below_half=False,
                                   locate=rules.locate_3d)
    assert score_3d == pytest.approx(0.25 * 0.6 + 0.25 * 0.8)  # no overlap: position 0


def test_dedup_and_numeracy():
    cat1, cat1_again, cat2 = box(0, 0, 100, 100), box(2, 2, 100, 100), box(200, 0, 300, 100)
    inner = box(10, 10, 50, 50)  # 90%+ of it lies inside cat1: the same object
    detections = [det("cat", 0.9, cat1), det("cat", 0.8, cat1_again), det("cat", 0.7, cat2), det("cat", 0.6, inner), det("dog", 0.5, cat1)]
    kept = rules.dedup_detections(detections)
    assert [(d.label, d.score) for d in kept] == [("cat", 0.9), ("cat", 0.7), ("dog", 0.5)]
    assert rules.numeracy_score([("cat", 2), ("dog", 1)], detections) == pytest.approx(1.0)
    assert rules.numeracy_score([("cat", 3), ("dog", 1)], detections) == pytest.approx(0.25 + 0.5)
    assert rules.numeracy_score([("cat", 2), ("bird", 1)], detections) == pytest.approx(0.5)
    assert rules.numeracy_score([], detections) == 0.0


def test_three_in_one():
    assert rules.three_in_one("spatial", 0.4, 0.8, 0.3) == pytest.approx(0.6)
    assert rules.three_in_one("action", 0.4, 0.8, 0.3) == pytest.approx(0.35)
    assert rules.three_in_one("both", 0.4, 0.8, 0.3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rules.three_in_one("other", 0, 0, 0)


def test_nms_keeps_the_most_confident_of_each_label():
    a, a_shifted, far = box(0, 0, 10, 10), box(1, 0, 11, 10), box(50, 50, 60, 60)
    kept = nms([det("cat", 0.5, a_shifted), det("cat", 0.9, a), det("dog", 0.4, a), det("cat", 0.3, far)], 0.5)
    assert [(d.label, d.score) for d in kept] == [("cat", 0.9), ("dog", 0.4), ("cat", 0.3)]


def test_to_unidet_frame_scales_boxes():
    (moved,) = to_unidet_frame([det("cat", 0.5, box(0, 0, 512, 256))], (512, 512))
    assert moved.box == box(0, 0, 479, 239.5)


# ------------------------------------------------------------------------- BLIP-VQA


def test_blip_yes_probability_matches_the_models_own_forward(tmp_path):
    """P(yes)/(P(yes)+P(no)) from the parts equals the ratio of the two answers' likelihoods
    that BlipForQuestionAnswering's forward (decoder loss on [DEC] yes / [DEC] no) gives."""
    folder = tiny_blip_folder(tmp_path / "blip")
    vqa = BlipVqa(str(folder), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    images = [random_image(1, (40, 56)), random_image(2, (64, 64)), random_image(3, (30, 30))]
    questions = [["a green bench?", "a blue bowl?"], ["a red cake and a dog?"], []]
    got = vqa.yes_probability(images, questions)
    assert [len(g) for g in got] == [2, 1, 0]
    model, tok = vqa.model, vqa.tokenizer
    for image, qs, probs in zip(images, questions, got):
        pixels = vqa.pixel_values([image])
        for question, p in zip(qs, probs):
            ids = tok([pre_question(question)], return_tensors="pt")
            dec = len(tok)  # BLIP's [DEC]; [ENC] follows it (the hub tokenizer names neither)
            ids["input_ids"][:, 0] = dec + 1
            losses = {}
            for answer in ("yes", "no"):
                decoder = torch.tensor([[dec, tok.convert_tokens_to_ids(answer)]])
                with torch.no_grad():
                    out = model(
                        input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels,
                        decoder_input_ids=decoder, labels=decoder, interpolate_pos_encoding=True,
                    )
                losses[answer] = out.loss.item()
            expected = np.exp(-losses["yes"]) / (np.exp(-losses["yes"]) + np.exp(-losses["no"]))
            assert p == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # batching changes nothing (questions of different lengths, images of other questions)
    alone = [vqa.yes_probability([image], [[q]])[0][0] for image, qs in zip(images, questions) for q in qs]
    assert sum(got, []) == pytest.approx(alone, abs=1e-6)
    # the images are resized to 480 px and the position grid interpolated
    assert vqa.pixel_values(images).shape == (3, 3, 480, 480)


def test_phrase_product_rounds_like_the_official_script():
    assert official_round(0.123456) == 0.1235
    assert phrase_product([0.50004, 0.5]) == official_round(0.5 * 0.5)
    assert phrase_product([]) == 1.0
    assert phrase_product([0.12345678, 0.87654321]) == official_round(0.1235 * 0.8765)


def test_blip_metric_scores_the_product_over_phrases(roles):
    metric = METRICS.get("compbench_blip_vqa")(MetricSpec(weights=str(roles)))
    assert metric.weights == {"blip": str(roles / "blip")}
    images = [random_image(3, (48, 48)), random_image(4, (48, 48))]
    prompts = ["a green bench and a blue bowl", "a red cake"]
    scores = metric.score(images, prompts)
    vqa = metric.scorer.model("blip")
    for image, prompt, score in zip(images, prompts, scores.tolist()):
        (probs,) = vqa.yes_probability([image], [text.blip_questions(prompt)])
        assert len(probs) == len(text.noun_chunks(prompt))
        assert score == pytest.approx(phrase_product(probs), abs=1e-6)


# --------------------------------------------------------------- detector and depth


def test_owlv2_detections_are_batch_independent_and_thresholded(roles):
    detector = Owlv2Detector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32, threshold=0.0, nms_iou=1.0)
    images = [random_image(5, (64, 48)), random_image(6, (64, 64))]
    labels = [["cat"], ["cat", "dog"]]
    together = detector.detect(images, labels)
    alone = [detector.detect([image], [ls])[0] for image, ls in zip(images, labels)]
    for a, b in zip(together, alone):
        assert len(a) == len(b) == 16  # threshold 0: every patch of the 4x4 grid
        assert [d.label for d in a] == [d.label for d in b]
        assert np.allclose([d.score for d in a], [d.score for d in b], atol=1e-5)
    assert {d.label for d in together[0]} == {"cat"}
    assert [d.score for d in together[1]] == sorted((d.score for d in together[1]), reverse=True)
    # boxes are in pixels of the padded square (the longer side)
    assert all(-64 < d.box.x_min and d.box.x_max < 128 for d in together[0])
    detector.threshold = float(np.median([d.score for d in together[1]]))
    assert 0 < len(detector.detect(images[1:], labels[1:])[0]) < 16
    assert detector.detect([images[0]], [[]]) == [[]]


def test_depth_follows_the_official_pipeline(roles):
    depth = MidasDepth(str(roles / "depth"), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    image = random_image(7, (96, 64))
    (got,) = depth.depth([image])
    frame = rules.unidet_frame(96, 64)
    assert frame == (480, 320)
    # independent: 480x480 bilinear, (x - 0.5) / 0.5, min-max, bilinear to the image, 8 bits, frame
    pixels = np.asarray(image.resize((480, 480), Image.BILINEAR), dtype=np.float32) / 255.0
    pixels = torch.from_numpy((pixels - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        inverse = depth.model(pixel_values=pixels).predicted_depth[0]
    normalised = (inverse - inverse.min()) / (inverse.max() - inverse.min())
    full = torch.nn.functional.interpolate(normalised[None, None], size=(64, 96), mode="bilinear", align_corners=True)[0, 0]
    stored = np.floor(np.clip(255 * full.numpy(), 0, 255)).astype(np.uint8)
    expected = np.asarray(Image.fromarray(stored).resize(frame, Image.BILINEAR), dtype=np.float32) / 255
    assert got.shape == expected.shape == (320, 480)
    assert np.allclose(got, expected, atol=1 / 255 + 1e-6)
    assert got.min() >= 0 and got.max() <= 1


# --------------------------------------------------------------------------- metrics


class FakeDetector:
    """Hand-built detections (image pixels) per prompt noun; records the queries."""

    def __init__(self, detections):
        self.detections, self.queries = detections, []

    def detect(self, images, labels_per_image):
        self.queries.append([list(ls) for ls in labels_per_image])
        return [[d for d in self.detections if d.label in ls] for ls in labels_per_image]


def test_spatial_metric_runs_the_rules_in_the_detector_frame(roles):
    metric = METRICS.get("compbench_spatial")(MetricSpec(weights=str(roles)))
    # a 512-px image: boxes 150 px apart horizontally are 140 px apart in the 479 frame
    fake = FakeDetector([det("cat", 0.9, box(0, 0, 20, 20)), det("dog", 0.8, box(150, 200, 170, 220)), det("bird", 0.7, box(0, 400, 20, 420))])
    metric.scorer._models["detector"] = fake
    image = Image.new("RGB", (512, 512))
    score_near, score_far = metric.score([image, image], ["a cat near a dog", "a cat near a bird"]).tolist()
    assert fake.queries == [[["cat", "dog"], ["cat", "bird"]]]
    assert score_near == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)  # |dx| = 140.3 < 150
    # |dx| 0, |dy| = 400 * 479/512: still "near" by the |dx| < 150 branch
    assert score_far == pytest.approx(0.25 * 0.9 + 0.25 * 0.7 + 0.5)


def test_numeracy_metric(roles):
    metric = METRICS.get("compbench_numeracy")(MetricSpec(weights=str(roles)))
    metric.scorer._models["detector"] = FakeDetector(
        [det("cat", 0.9, box(0, 0, 50, 50)), det("cat", 0.8, box(100, 0, 150, 50)), det("dog", 0.7, box(0, 100, 50, 150))]
    )
    image = Image.new("RGB", (256, 256))
    scores = metric.score([image] * 3, ["two cats and a dog", "three cats", "two unicorns"]).tolist()
    assert scores == pytest.approx([1.0, 0.5, 0.0])


def test_3d_metric_uses_depth(roles):
    metric = METRICS.get("compbench_spatial_3d")(MetricSpec(weights=str(roles)))
    metric.scorer._models["detector"] = FakeDetector([det("cat", 0.6, box(0, 0, 300, 300)), det("dog", 0.4, box(0, 0, 300, 310))])

    class FakeDepth:
        def depth(self, images):
            frame = np.zeros((479, 479), dtype=np.float32)
            frame[:100, :100] = 1.0  # the cat's (transposed) window is nearer on average
            return [frame for _ in images]

    metric.scorer._models["depth"] = FakeDepth()
    image = Image.new("RGB", (479, 479))
    front, behind = metric.score([image, image], ["a cat in front of a dog", "a cat behind a dog"]).tolist()
    assert front == pytest.approx(0.25 * 0.6 + 0.25 * 0.4 + 0.5)  # IoU > 0.5 and nearer: 1
    assert behind == pytest.approx(0.25)  # no 0.5 floor in the 3D script


def test_clip_metric_is_the_cosine(roles):
    metric = METRICS.get("compbench_clip")(MetricSpec(weights=str(roles)))
    model, tokenizer = metric.scorer.model("clip")
    image = random_image(8, (40, 30))
    (score,) = metric.score([image], ["a cat on a tree"]).tolist()
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(roles / "clip").eval()
    size = reference.config.vision_config.image_size
    # OpenAI preprocess: shorter side to `size` (bicubic), centre crop (round offset)
    w, h = image.size
    resized = image.resize((int(size * w / h), size), Image.BICUBIC)
    left = int(round((resized.width - size) / 2))
    crop = resized.crop((left, 0, left + size, size))
    pixels = torch.from_numpy(((np.asarray(crop, dtype=np.float32) / 255 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])).astype(np.float32)).permute(2, 0, 1)[None]
    ids = tokenizer(["a cat on a tree"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = reference(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels)
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert score == pytest.approx(expected, abs=1e-5)


def test_complex_metric_combines_by_kind(roles):
    metric = METRICS.get("compbench_complex")(MetricSpec(weights=str(roles)))
    scorer: CompBenchScorer = metric.scorer
    image = random_image(9, (48, 48))
    prompt = "The red hat was on top of the brown coat rack."
    attribute = scorer.attribute_scores([image], [prompt])[0]
    spatial = scorer.spatial_scores([image], [prompt], complex_prompts=True)[0]
    action = scorer.clip_scores([image], [text.remove_adjectives(prompt)])[0]
    assert metric.score([image], [prompt]).item() == pytest.approx((attribute + spatial + action) / 3, abs=1e-6)
    annotate(NAMESPACE, prompt, {"category": "complex", "complex_kind": "action"})
    assert metric.score([image], [prompt]).item() == pytest.approx((attribute + action) / 2, abs=1e-6)
    annotate(NAMESPACE, prompt, {"category": "complex", "complex_kind": "spatial"})
    assert metric.score([image], [prompt]).item() == pytest.approx((attribute + spatial) / 2, abs=1e-6)


def test_dispatching_metric_uses_each_prompts_category(roles):
    prompts = {"color": "a green bench and a blue bowl", "numeracy": "two cats", "non_spatial": "a man is riding a horse"}
    for category, prompt in prompts.items():
        annotate(NAMESPACE, prompt, {"category": category})
    metric = METRICS.get("t2i_compbench")(MetricSpec(weights=str(roles), batch_size=3))
    images = [random_image(10 + i, (48, 48)) for i in range(3)]
    got = metric.score(images, list(prompts.values())).tolist()
    scorer = metric.scorer
    expected = [
        scorer.attribute_scores(images[:1], [prompts["color"]])[0],
        scorer.numeracy_scores(images[1:2], [prompts["numeracy"]])[0],
        scorer.clip_scores(images[2:], [prompts["non_spatial"]])[0],
    ]
    assert got == pytest.approx(expected, abs=1e-6)
    with pytest.raises(LpoError, match="not a T2I-CompBench"):
        metric.score(images[:1], ["an unannotated prompt"])


def test_loading_errors_are_one_line_with_the_fix(tmp_path, roles):
    with pytest.raises(LpoError, match="takes no processor"):
        METRICS.get("t2i_compbench")(MetricSpec(weights=str(roles), processor=str(roles)))
    with pytest.raises(LpoError) as err:
        METRICS.get("compbench_blip_vqa")(MetricSpec(weights=str(tmp_path / "nothing-here")))
    assert "\n" not in str(err.value) and "--metric-weights compbench_blip_vqa=" in str(err.value)
    # a checkpoint missing a tensor fails instead of scoring with random weights
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    tiny_blip_folder(broken)
    state = load_file(broken / "model.safetensors")
    state.pop(next(k for k in state if k.startswith("text_decoder.")))
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LpoError, match="lacks 1 tensors") as err:
        METRICS.get("compbench_blip_vqa")(MetricSpec(weights=str(broken)))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------ benchmark


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "color_val.txt": "a green bench and a blue bowl\na blue bench and a green bowl\n\n",
        "shape_val.txt": "an oval sink and a rectangular mirror.\n",
        "texture_val.txt": "a plastic toy and a glass bottle\n",
        "spatial_val.txt": "a giraffe next to a lamp\n",
        "3d_spatial_val.txt": "a dog in front of a desk\n",
        "numeracy_val.txt": "two boys\n",
        "non_spatial_val.txt": "a man is riding a horse\na green bench and a blue bowl\n",
        "complex_val.txt": "The red hat was on top of the brown coat rack.\nThe black chair was next to the silver table.\nThe white cat is lying on the brown sofa.\n",
        "complex_val_spatial.txt": "The red hat was on top of the brown coat rack.\n",
        "complex_val_action.txt": "the white cat is lying on the brown sofa\n",
    }
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


def test_source_parsing(tmp_path):
    assert bench.parse_source(None) == (bench.CATEGORIES, None)
    assert bench.parse_source("color, shape") == (("color", "shape"), None)
    assert bench.parse_source(f"complex@{tmp_path}") == (("complex",), tmp_path)
    assert bench.parse_source(str(tmp_path)) == (bench.CATEGORIES, tmp_path)
    with pytest.raises(LpoError, match="unknown T2I-CompBench"):
        bench.parse_source(f"colour@{tmp_path}")


def test_benchmark_reads_the_official_folder(tmp_path):
    folder = write_dataset(tmp_path / "dataset")
    benchmark = BENCHMARKS.get("t2i-compbench")(str(folder))
    assert benchmark.default_metrics == ("t2i_compbench",) and benchmark.default_images_per_prompt == 10
    prompt_set = benchmark.prompt_set()
    assert len(prompt_set) == 11  # 12 lines, one prompt repeated in non_spatial kept once
    assert "1 repeated" in prompt_set.source
    assert list(dict.fromkeys(prompt_set.categories)) == list(bench.CATEGORIES)
    from lpo.evals.metrics.prompt_info import lookup

    assert lookup(NAMESPACE, "a green bench and a blue bowl") == {"category": "color"}
    assert lookup(NAMESPACE, "The red hat was on top of the brown coat rack.")["complex_kind"] == "spatial"
    # matched as the official script matches: text before the first '.', lower-cased
    assert lookup(NAMESPACE, "The white cat is lying on the brown sofa.")["complex_kind"] == "action"
    assert lookup(NAMESPACE, "The black chair was next to the silver table.")["complex_kind"] == "both"
    # a subset of categories, and a round-robin subset of prompts
    assert BENCHMARKS.get("t2i-compbench")(f"numeracy,color@{folder}").prompt_set().categories == ("numeracy", "color", "color")
    assert set(benchmark.prompt_set(8).categories) == set(bench.CATEGORIES)


def test_benchmark_missing_files_and_download(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path / "dataset")
    (folder / "complex_val_action.txt").unlink()
    with pytest.raises(LpoError, match="complex_val_action.txt"):
        BENCHMARKS.get("t2i-compbench")(f"complex@{folder}").prompt_set()
    assert BENCHMARKS.get("t2i-compbench")(f"color@{folder}").prompt_set().categories == ("color", "color")

    served = []

    def fake_urlopen(url, timeout):
        served.append(url)
        name = url.rsplit("/", 1)[-1]
        path = tmp_path / "dataset" / name
        if not path.exists():
            raise OSError("404")
        return io.BytesIO(path.read_bytes())

    monkeypatch.setattr(bench.urllib.request, "urlopen", fake_urlopen)
    prompt_set = BENCHMARKS.get("t2i-compbench")("color,numeracy").prompt_set()
    assert prompt_set.categories == ("color", "color", "numeracy")
    assert served == [bench.RAW_URL + "color_val.txt", bench.RAW_URL + "numeracy_val.txt"]
    BENCHMARKS.get("t2i-compbench")("color").prompt_set()  # cached: nothing fetched again
    assert len(served) == 2
    with pytest.raises(LpoError, match="could not download complex_val_action.txt") as err:
        BENCHMARKS.get("t2i-compbench")("complex").prompt_set()
    assert "\n" not in str(err.value)


def test_harness_evaluates_each_category_with_its_rule(tmp_path, tiny_sd15_dir, roles):
    """lpo eval's path: the benchmark records each prompt's category before the metric
    scores, and the record's breakdown is the per-category table row."""
    from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

    folder = write_dataset(tmp_path / "dataset")
    out = run_eval(
        EvalConfig(
            checkpoint=str(tiny_sd15_dir), benchmark="t2i-compbench", prompts=f"color,numeracy,non_spatial@{folder}",
            protocol=EvalProtocol(steps=2, images_per_prompt=1, batch_size=4), metric_weights={"t2i_compbench": str(roles)},
            device="cpu", cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
        )
    )
    (record,) = out.records
    assert record.metric == "t2i_compbench" and record.metric_weights and "blip" in record.metric_weights
    assert [entry["category"] for entry in record.breakdown] == ["color", "numeracy", "non_spatial"]
    prompts = list(out.prompt_set.prompts)
    images = [Image.open(out.image_folder / prompt_hash(p) / "0000.png").convert("RGB") for p in prompts]
    metric = METRICS.get("t2i_compbench")(MetricSpec(weights=str(roles)))
    direct = metric.score(images, prompts).tolist()
    key = record.metric_key
    assert [row[0] for row in out.scores[key]] == pytest.approx(direct, abs=1e-6)
    color = [v for v, c in zip(direct, out.prompt_set.categories) if c == "color"]
    assert record.breakdown[0]["value"] == pytest.approx(float(np.mean(color)), abs=1e-6)


def test_role_refs(tmp_path):
    from lpo.evals.metrics.model_roles import role_refs

    defaults = {"blip": "Salesforce/blip", "detector": "google/owl"}
    assert role_refs(None, defaults, "blip") == defaults
    assert role_refs("me/my-blip", defaults, "blip") == {"blip": "me/my-blip", "detector": "google/owl"}
    (tmp_path / "detector").mkdir()
    assert role_refs(str(tmp_path), defaults, "blip") == {"blip": "Salesforce/blip", "detector": str(tmp_path / "detector")}
    plain = tmp_path / "plain-model"
    plain.mkdir()
    assert role_refs(str(plain), defaults, "detector") == {"blip": "Salesforce/blip", "detector": str(plain)}


def test_blip_vqa_original_checkpoint_converts_at_its_native_size(tmp_path):
    """BLIP's model_base_vqa_capfilt_large.pth layout (timm ViT + med.py BERT towers) into a transformers folder."""
    from transformers import BlipForQuestionAnswering
    from typer.testing import CliRunner

    from lpo.cli import app
    from lpo.evals.metrics.image_reward import BlipArchitecture
    from metric_fixtures import RefVit, randomise

    hub = tiny_blip_folder(tmp_path / "hub")  # the hub conversion: 64 px, 2×2 patches of 32
    reference = BlipForQuestionAnswering.from_pretrained(hub)
    vision = reference.config.vision_config
    arch = BlipArchitecture(image_size=96, patch_size=32, vision_width=32, vision_layers=2, vision_heads=2, vision_mlp=37,
                            vocab_size=0, text_width=32, text_layers=2, text_heads=2, text_mlp=37, max_positions=64)
    assert vision.patch_size == arch.patch_size and vision.image_size != arch.image_size
    vit = randomise(RefVit(arch), seed=5, std=0.2).eval()  # BLIP's own ViT code, trained at 96 px
    state = {f"visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in reference.text_encoder.state_dict().items()})
    state.update({f"text_decoder.{k}": v for k, v in reference.text_decoder.state_dict().items()})
    state["text_encoder.embeddings.position_ids"] = torch.arange(64)[None]  # med.py's buffer, dropped
    torch.save({"model": state, "epoch": 9}, tmp_path / "model_base_vqa.pth")

    result = CliRunner().invoke(app, ["convert", "blip-vqa", str(tmp_path / "model_base_vqa.pth"), "--out",
                                      str(tmp_path / "native"), "--config", str(hub)])
    assert result.exit_code == 0, result.output
    converted = BlipForQuestionAnswering.from_pretrained(tmp_path / "native").eval()
    assert converted.config.vision_config.image_size == 96  # read from pos_embed: 1 + 3×3 patches
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(converted.vision_model(pixel_values=pixels).last_hidden_state, vit(pixels),
                                   rtol=1e-4, atol=1e-4)
        for name, tensor in reference.text_decoder.state_dict().items():
            torch.testing.assert_close(converted.text_decoder.state_dict()[name], tensor)
    # the converted folder is what the metric loads: no position-embedding interpolation at its size
    blip = BlipVqa(str(tmp_path / "native"), metric="m", fix="f", device=torch.device("cpu"), dtype=torch.float32,
                   image_size=96)
    assert len(blip.yes_probability([random_image(0, (96, 96))], [["is there a cat?"]])[0]) == 1

    bad = dict(state, **{"visual_encoder_m.cls_token": torch.zeros(1)})
    torch.save({"model": bad}, tmp_path / "momentum.pth")
    result = CliRunner().invoke(app, ["convert", "blip-vqa", str(tmp_path / "momentum.pth"), "--out",
                                      str(tmp_path / "x"), "--config", str(hub)])
    assert result.exit_code == 2 and "not a tensor of BLIP's VQA model" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


# --------------------------------------------------------------- spaCy's reading

class _Token:
    def __init__(self, text, pos):
        self.text, self.pos_ = text, pos


class _Span:
    def __init__(self, tokens):
        self.text = " ".join(t.text for t in tokens)

    def __str__(self):
        return self.text


class _Doc(list):
    """What the readings use of a spaCy Doc: tokens with .text / .pos_, and noun_chunks."""

    def __init__(self, tagged):
        super().__init__(_Token(w, p) for w, p in tagged)
        chunks, current = [], []
        for token in self:  # a toy chunker: DET/ADJ/NOUN runs that end in a NOUN
            if token.pos_ in ("DET", "ADJ", "NOUN"):
                current.append(token)
            else:
                current = []
            if token.pos_ == "NOUN" and (token is self[-1] or self[self.index(token) + 1].pos_ != "NOUN"):
                chunks.append(_Span(current))
                current = []
        self.noun_chunks = chunks


class _FakeNlp:
    """A stand-in for spacy.load("en_core_web_sm") that knows a few tagged prompts."""

    TAGGED = {
        "a red book and a yellow vase": [("a", "DET"), ("red", "ADJ"), ("book", "NOUN"), ("and", "CCONJ"),
                                         ("a", "DET"), ("yellow", "ADJ"), ("vase", "NOUN")],
        "a girl on the left of a horse": [("a", "DET"), ("girl", "NOUN"), ("on", "ADP"), ("the", "DET"),
                                          ("left", "NOUN"), ("of", "ADP"), ("a", "DET"), ("horse", "NOUN")],
        "the brown cat sat next to the wooden table": [
            ("the", "DET"), ("brown", "ADJ"), ("cat", "NOUN"), ("sat", "VERB"), ("next", "ADV"), ("to", "ADP"),
            ("the", "DET"), ("wooden", "ADJ"), ("table", "NOUN")],
    }
    meta = {"lang": "en", "name": "core_web_sm", "version": "3.8.0"}

    def __call__(self, prompt):
        return _Doc(self.TAGGED[prompt])


def test_spacy_reading_gives_the_official_readings_from_the_parse():
    from lpo.evals.metrics.compbench_spacy import SpacyReading

    reading = SpacyReading(_FakeNlp(), "spacy-test")
    assert reading.noun_chunks("a red book and a yellow vase") == ["a red book", "a yellow vase"]
    assert reading.blip_questions("a red book and a yellow vase", max_phrases=1) == ["a red book?"]
    # 2D spatial: the first and last NOUN of the whole prompt (spaCy tags "left" a noun; upstream reads the ends)
    assert reading.spatial_objects("a girl on the left of a horse", "on the left of") == ("girl", "horse")
    # complex: the nearest NOUN before "next to" and the first after it
    assert reading.complex_spatial_objects("the brown cat sat next to the wooden table") == ("cat", "table")
    assert reading.complex_spatial_objects("a red book and a yellow vase") is None  # no preposition of the list
    assert reading.remove_adjectives("the brown cat sat next to the wooden table") == "the cat sat next to the table"


def test_the_parser_is_chosen_by_what_is_installed_and_named_in_the_version(roles, monkeypatch):
    import lpo.evals.metrics.compbench as compbench
    from lpo.evals.metrics.compbench_spacy import SpacyReading, spacy_reading

    monkeypatch.setenv("LPO_COMPBENCH_PARSER", "rules")
    assert spacy_reading() is None
    monkeypatch.setenv("LPO_COMPBENCH_PARSER", "parsey")
    with pytest.raises(LpoError, match="not a parser; use auto, rules or spacy"):
        spacy_reading()
    monkeypatch.setenv("LPO_COMPBENCH_PARSER", "spacy")
    with pytest.raises(LpoError, match=r"pip install 'lpo\[compbench-spacy\]'"):
        spacy_reading(model="lpo_no_such_spacy_model")
    monkeypatch.delenv("LPO_COMPBENCH_PARSER")
    assert spacy_reading(model="lpo_no_such_spacy_model") is None  # auto: the rules stay the fallback

    rules_metric = METRICS.get("compbench_blip_vqa")(MetricSpec(weights=str(roles)))
    monkeypatch.setattr(compbench, "spacy_reading", lambda: SpacyReading(_FakeNlp(), "spacy3.8-en_core_web_sm3.8.0"))
    spacy_metric = METRICS.get("compbench_blip_vqa")(MetricSpec(weights=str(roles)))
    assert spacy_metric.version == f"{rules_metric.version}+spacy3.8-en_core_web_sm3.8.0"
    assert "without spaCy" in rules_metric.comparability_note and "without spaCy" not in spacy_metric.comparability_note
    assert METRICS.get("compbench_clip")(MetricSpec(weights=str(roles))).version == compbench.VERSIONS["clip"]
    # the questions asked are spaCy's chunks
    image = random_image(3, (48, 48))
    (score,) = spacy_metric.score([image], ["a red book and a yellow vase"]).tolist()
    (probs,) = spacy_metric.scorer.model("blip").yes_probability([image], [["a red book?", "a yellow vase?"]])
    assert score == pytest.approx(phrase_product(probs), abs=1e-6)


def test_blip_images_are_squashed_to_480_bicubic_with_clip_normalisation(roles):
    vqa = BlipVqa(str(roles / "blip"), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    image = random_image(1, (40, 56))  # not square: a centre crop or a padding would differ
    resized = np.asarray(image.resize((480, 480), Image.BICUBIC), dtype=np.float32) / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy((resized - mean) / std).permute(2, 0, 1)
    torch.testing.assert_close(vqa.pixel_values([image])[0], expected, atol=1e-5, rtol=0)


def test_owlv2_detections_are_the_models_outputs_on_the_padded_image(roles):
    """Independent statement of the preprocessing (pad bottom/right with 0, bilinear, CLIP
    mean/std), the query text and the box decoding, against the detector's detections."""
    detector = Owlv2Detector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32,
                             threshold=0.0, nms_iou=1.0)
    image = random_image(5, (96, 60))  # W=96, H=60: 36 rows of padding below, then 96 -> 64 px
    labels = ["cat", "dog"]
    (got,) = detector.detect([image], [labels])
    size = detector.image_size
    square = np.zeros((96, 96, 3), dtype=np.float32)
    square[:60] = np.asarray(image, dtype=np.float32) / 255
    channels = [np.asarray(Image.fromarray(square[..., c]).resize((size, size), Image.BILINEAR)) for c in range(3)]
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32).reshape(3, 1, 1)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32).reshape(3, 1, 1)
    pixels = torch.from_numpy((np.stack(channels) - mean) / std)[None]
    tokens = detector.tokenizer(["a photo of a cat", "a photo of a dog"], padding="max_length", truncation=True,
                                max_length=detector.max_length, return_tensors="pt")
    with torch.no_grad():
        out = detector.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    probs = torch.sigmoid(out.logits[0])  # (patches, 2)
    scores, which = probs.max(dim=-1)
    cx, cy, w, h = (out.pred_boxes[0] * 96).unbind(-1)  # relative to the padded 96x96 square
    expected = sorted(
        ((float(s), labels[int(k)], (float(x - bw / 2), float(y - bh / 2), float(x + bw / 2), float(y + bh / 2)))
         for s, k, x, y, bw, bh in zip(scores, which, cx, cy, w, h)),
        key=lambda e: -e[0],
    )
    assert len(got) == len(expected) == 16
    assert [d.label for d in got] == [e[1] for e in expected]
    assert [d.score for d in got] == pytest.approx([e[0] for e in expected], abs=1e-5)
    for d, e in zip(got, expected):
        assert (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) == pytest.approx(e[2], abs=1e-3)


def test_owlv2_defaults_are_the_documented_ones(roles):
    from lpo.evals.metrics import detection

    # transformers' post_process_object_detection threshold for OWLv2, UniDet's per-class NMS IoU
    assert (detection.OWLV2_THRESHOLD, detection.OWLV2_NMS_IOU, detection.QUERY_TEMPLATE) == (0.1, 0.5, "a photo of a {}")
    detector = Owlv2Detector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    assert (detector.threshold, detector.nms_iou, detector.template) == (0.1, 0.5, "a photo of a {}")
