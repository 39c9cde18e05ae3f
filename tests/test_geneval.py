"""GenEval: prompt grammar, the official rules on hand-built detections, Mask2Former
post-processing and the CLIP colour classifier on tiny random checkpoints, the metric
and the benchmark's metadata file. Nothing is downloaded."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection_fixtures import geneval_roles, tiny_mask2former_folder
from metric_fixtures import random_image
from lpo.core.errors import LpoError
from lpo.evals.benchmarks import BENCHMARKS
from lpo.evals.benchmarks import geneval as bench
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics import geneval as ge
from lpo.evals.metrics import geneval_rules as rules
from lpo.evals.metrics.prompt_info import annotate, forget, lookup

CPU = torch.device("cpu")
Obj = rules.GenevalObject

# Lines in the format of the official prompts/evaluation_metadata.jsonl.
OFFICIAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "toilet", "count": 1}, {"class": "orange", "count": 1}], "prompt": "a photo of a toilet and an orange"},
    {"tag": "counting", "include": [{"class": "bus", "count": 2}], "exclude": [{"class": "bus", "count": 3}], "prompt": "a photo of two buses"},
    {"tag": "colors", "include": [{"class": "tv remote", "count": 1, "color": "orange"}], "prompt": "a photo of an orange tv remote"},
    {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "computer keyboard", "count": 1, "position": ["left of", 0]}], "prompt": "a photo of a computer keyboard left of a dog"},
    {"tag": "color_attr", "include": [{"class": "oven", "count": 1, "color": "pink"}, {"class": "motorcycle", "count": 1, "color": "green"}], "prompt": "a photo of a pink oven and a green motorcycle"},
]


@pytest.fixture(scope="module")
def roles(tmp_path_factory) -> Path:
    return geneval_roles(tmp_path_factory.mktemp("geneval-roles"))


@pytest.fixture(autouse=True)
def _clean_annotations():
    forget(ge.NAMESPACE)
    yield
    forget(ge.NAMESPACE)


# -------------------------------------------------------------------------- prompts


def test_official_lines_parse_back_to_their_metadata():
    for record in OFFICIAL:
        assert rules.parse_prompt(record["prompt"]) == record
        assert rules.prompt_of(record) == record["prompt"]


def test_every_generated_prompt_parses_uniquely():
    rng = np.random.default_rng(0)
    names = rules.CLASSNAMES
    samples = [{"tag": "single_object", "include": [{"class": c, "count": 1}]} for c in names]
    for _ in range(300):
        a, b = rng.choice(len(names), size=2, replace=False)
        ca, cb = rng.choice(len(rules.COLORS), size=2, replace=False)
        n = int(rng.integers(2, 5))
        p = rules.POSITIONS[rng.integers(4)]
        samples += [
            {"tag": "two_object", "include": [{"class": names[a], "count": 1}, {"class": names[b], "count": 1}]},
            {"tag": "counting", "include": [{"class": names[a], "count": n}], "exclude": [{"class": names[a], "count": n + 1}]},
            {"tag": "colors", "include": [{"class": names[a], "count": 1, "color": rules.COLORS[ca]}]},
            {"tag": "position", "include": [{"class": names[b], "count": 1}, {"class": names[a], "count": 1, "position": [p, 0]}]},
            {"tag": "color_attr", "include": [
                {"class": names[a], "count": 1, "color": rules.COLORS[ca]}, {"class": names[b], "count": 1, "color": rules.COLORS[cb]},
            ]},
        ]
    for sample in samples:
        prompt = rules.prompt_of(sample)
        assert rules.parse_prompt(prompt) == {**sample, "prompt": prompt}, prompt


def test_prompts_outside_the_grammar_do_not_parse():
    for prompt in ("a photo of a cat and dog", "a photo of a unicorn", "a photo of an bench", "a cat", "a photo of two bench"):
        assert rules.parse_prompt(prompt) is None
    assert rules.make_plural("bus") == "buses" and rules.with_article("orange") == "an orange"


# --------------------------------------------------------------------------- rules


def test_select_objects_thresholds_sorts_and_caps():
    candidates = {
        "cat": [Obj((0, 0, 10, 10), 0.5), Obj((20, 0, 30, 10), 0.95), Obj((40, 0, 50, 10), 0.2)],
        "dog": [Obj((0, 0, 10, 10), 0.1)],
        "car": [Obj((i, 0, i + 5, 5), 0.4 + i / 1000) for i in range(20)],
    }
    kept = rules.select_objects(candidates, counting=False)
    assert [o.score for o in kept["cat"]] == [0.95, 0.5]
    assert "dog" not in kept
    assert len(kept["car"]) == 16 and kept["car"][0].score == pytest.approx(0.419)
    counting = rules.select_objects(candidates, counting=True)
    assert list(counting) == ["cat"] and [o.score for o in counting["cat"]] == [0.95]
    overlapping = {"cat": [Obj((0, 0, 10, 10), 0.9), Obj((1, 0, 11, 10), 0.8), Obj((30, 0, 40, 10), 0.7)]}
    assert len(rules.select_objects(overlapping, counting=False)["cat"]) == 3  # max_overlap 1.0: no de-duplication
    assert len(rules.select_objects(overlapping, counting=False, max_overlap=0.5)["cat"]) == 2
    assert rules.compute_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert rules.compute_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


def test_relative_position():
    a = Obj((0, 0, 10, 10), 1.0)
    assert rules.relative_position(a, Obj((100, 0, 110, 10), 1.0)) == {"left of"}
    assert rules.relative_position(a, Obj((-100, 0, -90, 10), 1.0)) == {"right of"}
    assert rules.relative_position(a, Obj((0, 100, 10, 110), 1.0)) == {"above"}
    assert rules.relative_position(a, Obj((0, -100, 10, -90), 1.0)) == {"below"}
    assert rules.relative_position(a, Obj((100, 100, 110, 110), 1.0)) == {"left of", "above"}
    # the offset shrinks by 0.1 x (10 + 10) per axis: 1 pixel apart is no relation
    assert rules.relative_position(a, Obj((1, 0, 11, 10), 1.0)) == set()
    # a mostly-horizontal offset: dx/|offset| > 0.5 but dy small
    assert rules.relative_position(a, Obj((100, 30, 110, 40), 1.0)) == {"left of"}


def colours_by_box(mapping):
    return lambda classname, objects: [mapping[o.box] for o in objects]


def test_evaluate_includes_excludes_colours_and_positions():
    cat, dog = Obj((0, 0, 10, 10), 0.9), Obj((100, 0, 110, 10), 0.8)
    objects = {"cat": [cat], "dog": [dog]}
    colours = colours_by_box({cat.box: "red", dog.box: "blue"})
    ok = lambda metadata: rules.evaluate(objects, metadata, colours)[0]  # noqa: E731
    assert ok({"include": [{"class": "cat", "count": 1}]})
    assert not ok({"include": [{"class": "cat", "count": 2}]})
    assert not ok({"include": [{"class": "bird", "count": 1}]})
    assert ok({"include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]})
    assert not ok({"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "cat", "count": 1}]})
    assert ok({"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "cat", "count": 2}]})
    assert ok({"include": [{"class": "cat", "count": 1, "color": "red"}]})
    assert not ok({"include": [{"class": "cat", "count": 1, "color": "blue"}]})
    assert ok({"include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]})
    assert not ok({"include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}]})
    # the target clause failed: no target
    correct, reason = rules.evaluate(objects, {"include": [{"class": "bird", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}, colours)
    assert not correct and "no target" in reason


def test_evaluate_colour_counts_only_the_most_confident_objects():
    first, second = Obj((0, 0, 10, 10), 0.9), Obj((50, 0, 60, 10), 0.8)
    colours = colours_by_box({first.box: "green", second.box: "red"})
    seen = []

    def classify(classname, objects):
        seen.append(len(objects))
        return colours(classname, objects)

    assert not rules.evaluate({"car": [first, second]}, {"include": [{"class": "car", "count": 1, "color": "red"}]}, classify)[0]
    assert seen == [1]


def test_overall_is_the_mean_of_task_scores():
    assert rules.overall_score({"single_object": 1.0, "counting": 0.5, "position": 0.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rules.overall_score({})


# -------------------------------------------------------------------- Mask2Former


def test_resize_is_mmcvs_cv2_linear_not_pils_antialiased():
    # mmcv.imrescale: cv2.INTER_LINEAR (half-pixel centres, no antialiasing), here SDXL's 1024 px down to 800
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    resized = ge.mmcv_bilinear_resize(image, (50, 40))
    assert resized.shape == (40, 50, 3) and resized.dtype == np.uint8
    source = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].double()
    bilinear = torch.nn.functional.interpolate(source, size=(40, 50), mode="bilinear", align_corners=False, antialias=False)
    bilinear = bilinear[0].permute(1, 2, 0).numpy()
    assert np.abs(resized - bilinear).max() <= 1.0  # cv2's fixed-point rounding only
    pil = np.asarray(image.resize((50, 40), Image.BILINEAR), dtype=np.float64)
    assert np.abs(pil - bilinear).mean() > 5.0  # PIL's antialiased filter is another resize


def test_resize_without_opencv_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("no cv2")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(LpoError, match=r"pip install 'lpo\[geneval\]'"):
        ge.mmcv_bilinear_resize(Image.new("RGB", (8, 8)), (4, 4))


def test_mmdet_resize_shape():
    assert ge.mmdet_resize_shape(512, 512) == (800, 800)
    assert ge.mmdet_resize_shape(1024, 768) == (1067, 800)
    assert ge.mmdet_resize_shape(2000, 500) == (1333, 333)


def test_mask_boxes_and_instance_postprocess():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert ge.mask_boxes(masks).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]
    class_logits = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0]])  # 2 queries, 3 classes + no-object
    mask_logits = torch.full((2, 6, 8), -5.0)
    mask_logits[0, 0:2, 0:2] = 2.0
    mask_logits[1, 3:6, 4:8] = 1.0
    labels, scores, boxes, binary = ge.instance_postprocess(class_logits, mask_logits, max_per_image=2)
    order = torch.argsort(scores, descending=True)
    probs = torch.softmax(class_logits, dim=-1)
    mask_score = {0: torch.sigmoid(torch.tensor(2.0)), 1: torch.sigmoid(torch.tensor(1.0))}
    expected = sorted([(probs[0, 0] * mask_score[0], 0, [0, 0, 2, 2]), (probs[1, 1] * mask_score[1], 1, [4, 3, 8, 6])], key=lambda t: -t[0])
    assert [int(labels[i]) for i in order] == [e[1] for e in expected]
    assert [float(scores[i]) for i in order] == pytest.approx([float(e[0]) for e in expected], rel=1e-5)
    assert [boxes[i].tolist() for i in order] == [e[2] for e in expected]
    assert binary.shape == (2, 6, 8)


def test_mask2former_detects_in_the_official_layout(roles):
    detector = ge.GenevalDetector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32, scale=(96, 64))
    image = random_image(1, (48, 40))
    pixels, resized = detector.pixel_values(image)
    assert resized == ge.mmdet_resize_shape(48, 40, (96, 64)) == (77, 64)
    assert pixels.shape == (1, 3, 64, 96)  # padded to multiples of 32
    found = detector.detect(image)
    objects = [o for objs in found.values() for o in objs]
    assert len(objects) == 100  # the 100 best of 6 queries x 80 classes
    assert set(found) <= set(rules.CLASSNAMES)
    for o in objects:
        assert o.mask.shape == (40, 48) and 0 <= o.score <= 1
        assert list(o.box) == ge.mask_boxes(torch.from_numpy(o.mask)[None])[0].tolist()


def test_mask2former_loading_errors(tmp_path):
    kwargs = dict(metric="geneval", fix="pass --metric-weights geneval=PATH", device=CPU, dtype=torch.float32)
    no_head = tiny_mask2former_folder(tmp_path / "no-head", drop=("class_predictor.bias",))
    with pytest.raises(LpoError, match="class_predictor.bias") as err:
        ge.GenevalDetector(str(no_head), **kwargs)
    assert "\n" not in str(err.value)
    five = tiny_mask2former_folder(tmp_path / "five", num_labels=5)
    with pytest.raises(LpoError, match="5 classes, not COCO's 80"):
        ge.GenevalDetector(str(five), **kwargs)
    state_folder = tiny_mask2former_folder(tmp_path / "partial")
    from safetensors.torch import load_file, save_file

    state = load_file(state_folder / "model.safetensors")
    state.pop(next(k for k in state if k.startswith("model.transformer_module")))
    save_file(state, state_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LpoError, match="lacks 1 tensors"):
        ge.GenevalDetector(str(state_folder), **kwargs)
    with pytest.raises(LpoError, match="--metric-weights geneval="):
        METRICS.get("geneval")(MetricSpec(weights=str(tmp_path / "missing")))


# -------------------------------------------------------------------- colour CLIP


def test_colour_classifier(roles):
    clf = ge.ColorClassifier(str(roles / "clip"), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    weights = clf.classifier("tv remote")
    assert weights.shape[1] == 10
    # independent: transformers' text features of the 30 prompts, normalised, averaged, normalised
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(roles / "clip").eval()
    for j, colour in enumerate(rules.COLORS):
        texts = [f"a photo of a {colour} tv remote", f"a photo of a {colour}-colored tv remote", f"a photo of a {colour} object"]
        # the tiny vocabulary spells most words letter by letter: truncate to its 16-token
        # context as the classifier does (real prompts are far below CLIP's 77)
        ids = clf.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            feats = reference(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds
        mean = feats.mean(dim=0)
        assert torch.allclose(weights[:, j], mean / mean.norm(), atol=1e-5)

    image = Image.new("RGB", (20, 10), (255, 0, 0))
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:6, 3:9] = True
    (crop,) = clf.crops(image, [Obj((2.4, 1.6, 10.5, 8.0), 0.9, mask)])
    assert crop.size == (8, 6)  # PIL rounds the box: (2, 2, 10, 8)
    pixels = np.asarray(crop)
    assert tuple(pixels[0, 0]) == (153, 153, 153) and tuple(pixels[1, 2]) == (255, 0, 0)  # #999 outside the mask

    objects = [Obj((0, 0, 20, 10), 0.9, None), Obj((0, 0, 10, 10), 0.8, mask)]
    got = clf.colors(image, "car", objects)
    crops = clf.crops(image, objects)
    from lpo.evals.metrics.preprocess import resize_shorter_center_crop, to_pixel_values

    px = to_pixel_values([resize_shorter_center_crop(c, 32) for c in crops])
    with torch.no_grad():
        feats = reference.get_image_features(pixel_values=px)
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = feats / feats.norm(dim=-1, keepdim=True)
    assert got == [rules.COLORS[int(i)] for i in (feats @ clf.classifier("car")).argmax(dim=1)]


# -------------------------------------------------------------------------- metric


class FakeDetector:
    def __init__(self, candidates):
        self.candidates = candidates

    def detect(self, image):
        return self.candidates


class FakeColours:
    def __init__(self, colour):
        self.colour = colour

    def colors(self, image, classname, objects):
        return [self.colour] * len(objects)


def test_metric_scores_each_image_against_its_metadata(roles):
    metric = METRICS.get("geneval")(MetricSpec(weights=str(roles)))
    assert metric.weights == {"detector": str(roles / "detector"), "clip": str(roles / "clip")}
    image = Image.new("RGB", (64, 64))
    # random tiny models: a real run gives one 0/1 value per image
    values = metric.score([image, random_image(2, (64, 64))], ["a photo of a bench", "a photo of two buses"]).tolist()
    assert all(v in (0.0, 1.0) for v in values)

    metric.detector = FakeDetector({"bus": [Obj((0, 0, 10, 10), 0.95), Obj((30, 0, 40, 10), 0.5)], "pizza": [Obj((0, 30, 10, 40), 0.6)]})
    metric.colour = FakeColours("orange")
    prompts = [
        "a photo of a bus",  # found
        "a photo of two buses",  # counting keeps only scores > 0.9: one bus
        "a photo of an orange pizza",
        "a photo of a red pizza",
        "a photo of a pizza below a bus",
        "a photo of a pizza above a bus",
    ]
    assert metric.score([image] * len(prompts), prompts).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # metadata recorded by the benchmark wins over the parse
    annotate(ge.NAMESPACE, "a photo of two buses", {"tag": "counting", "include": [{"class": "bus", "count": 1}], "prompt": "a photo of two buses"})
    assert metric.score([image], ["a photo of two buses"]).tolist() == [1.0]
    with pytest.raises(LpoError, match="no GenEval metadata"):
        metric.score([image], ["a bus at night"])


# ----------------------------------------------------------------------- benchmark


def write_metadata(path: Path, records=OFFICIAL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_benchmark_reads_the_metadata_file(tmp_path):
    path = write_metadata(tmp_path / "prompts" / "evaluation_metadata.jsonl", OFFICIAL + [OFFICIAL[0]])
    benchmark = BENCHMARKS.get("geneval")(str(path.parent))
    assert benchmark.default_metrics == ("geneval",) and benchmark.default_images_per_prompt == 4
    assert benchmark.overall == "category_mean"
    prompt_set = benchmark.prompt_set()
    assert prompt_set.prompts == tuple(r["prompt"] for r in OFFICIAL)
    assert prompt_set.categories == rules.TAGS
    assert "1 repeated" in prompt_set.source
    assert lookup(ge.NAMESPACE, "a photo of two buses") == OFFICIAL[2]
    assert BENCHMARKS.get("geneval")(str(path)).prompt_set(3).prompts == tuple(r["prompt"] for r in OFFICIAL[:3])


def test_benchmark_errors_and_download(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "colors", "prompt": "a photo of a red car"}\n')
    with pytest.raises(LpoError, match="line 1 lacks tag/include/prompt"):
        BENCHMARKS.get("geneval")(str(bad)).prompt_set()
    bad.write_text("not json\n")
    with pytest.raises(LpoError, match="line 1 is not JSON"):
        BENCHMARKS.get("geneval")(str(bad)).prompt_set()
    with pytest.raises(LpoError, match="no GenEval metadata at"):
        BENCHMARKS.get("geneval")(str(tmp_path / "nowhere")).prompt_set()

    source = write_metadata(tmp_path / "served.jsonl")
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(source.read_bytes())

    monkeypatch.setattr(bench.urllib.request, "urlopen", fake_urlopen)
    assert len(BENCHMARKS.get("geneval")(None).prompt_set()) == len(OFFICIAL)
    assert len(BENCHMARKS.get("geneval")(None).prompt_set()) == len(OFFICIAL)
    assert fetched == [bench.RAW_URL]  # cached after the first

    bench.download_metadata().unlink()  # the cached copy

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(bench.urllib.request, "urlopen", offline)
    with pytest.raises(LpoError, match="could not download evaluation_metadata.jsonl") as err:
        BENCHMARKS.get("geneval")(None).prompt_set()
    assert "\n" not in str(err.value)


def test_harness_breaks_geneval_down_by_task(tmp_path, tiny_sd15_dir, roles):
    """lpo eval's path: the benchmark records each prompt's metadata, the metric scores
    0/1 per image, the record breaks down by task; GenEval's overall is their mean."""
    from lpo.evals.benchmarks import prompt_hash
    from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

    path = write_metadata(tmp_path / "evaluation_metadata.jsonl")
    out = run_eval(
        EvalConfig(
            checkpoint=str(tiny_sd15_dir), benchmark="geneval", prompts=str(path),
            protocol=EvalProtocol(steps=2, images_per_prompt=1, batch_size=6), metric_weights={"geneval": str(roles)},
            device="cpu", cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
        )
    )
    (record,) = out.records
    assert [entry["category"] for entry in record.breakdown] == list(rules.TAGS)
    prompts = list(out.prompt_set.prompts)
    images = [Image.open(out.image_folder / prompt_hash(p) / "0000.png").convert("RGB") for p in prompts]
    metric = METRICS.get("geneval")(MetricSpec(weights=str(roles)))
    direct = metric.score(images, prompts).tolist()
    assert [row[0] for row in out.scores[record.metric_key]] == direct
    tasks = {entry["category"]: entry["value"] for entry in record.breakdown}
    assert tasks == {tag: v for tag, v in zip(rules.TAGS, direct)}
    assert rules.overall_score(tasks) == pytest.approx(float(np.mean(direct)))  # one image per task here


def test_thresholds_are_genevals_at_their_boundaries():
    candidates = {"cat": [Obj((0, 0, 10, 10), 0.31), Obj((20, 0, 30, 10), 0.29)],
                  "dog": [Obj((0, 0, 10, 10), 0.91), Obj((20, 0, 30, 10), 0.89)]}
    kept = rules.select_objects(candidates, counting=False)  # threshold 0.3
    assert [o.score for o in kept["cat"]] == [0.31] and len(kept["dog"]) == 2
    counting = rules.select_objects(candidates, counting=True)  # counting threshold 0.9
    assert list(counting) == ["dog"] and [o.score for o in counting["dog"]] == [0.91]
    # position: each offset shrinks by 0.1 x (10 + 10) = 2 px; a relation needs more than half the offset left
    a = Obj((0, 0, 10, 10), 1.0)
    assert rules.relative_position(a, Obj((6, 0, 16, 10), 1.0)) == {"left of"}  # (6 - 2) / 6 > 0.5 (0.2: 2 / 6)
    assert rules.relative_position(a, Obj((0, 6, 10, 16), 1.0)) == {"above"}
    assert rules.relative_position(a, Obj((3, 0, 13, 10), 1.0)) == set()  # (3 - 2) / 3 (0.05: 2 / 3)


def test_mask2former_input_is_rgb_imagenet_normalised_and_padded_below_and_right(roles):
    detector = ge.GenevalDetector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32, scale=(96, 64))
    image = random_image(1, (48, 40))
    pixels, (width, height) = detector.pixel_values(image)
    resized = ge.mmcv_bilinear_resize(image, (width, height)).astype(np.float32)  # (64, 77, 3) RGB
    expected = (resized - np.array([123.675, 116.28, 103.53], dtype=np.float32)) / np.array([58.395, 57.12, 57.375], dtype=np.float32)
    torch.testing.assert_close(pixels[0, :, :height, :width], torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.all(pixels[0, :, :, width:] == 0) and torch.all(pixels[0, :, height:, :] == 0)


def test_masks_are_cropped_to_the_resized_image_before_upsampling(roles):
    """The padding's mask logits must not reach the image: positive logits inside the resized
    image and negative ones in the padding give masks covering the whole image."""
    detector = ge.GenevalDetector(str(roles / "detector"), metric="t", fix="fix", device=CPU, dtype=torch.float32, scale=(96, 64))
    image = random_image(1, (48, 40))
    pixels, (width, height) = detector.pixel_values(image)
    padded_h, padded_w = pixels.shape[-2:]
    mask_logits = torch.full((1, 2, padded_h, padded_w), -5.0)
    mask_logits[:, :, :height, :width] = 5.0
    class_logits = torch.zeros(1, 2, len(rules.CLASSNAMES) + 1)
    detector.model = lambda pixel_values: (class_logits, mask_logits)
    objects = [o for objs in detector.detect(image).values() for o in objs]
    assert objects and all(o.mask.all() for o in objects)
    assert all(list(o.box) == [0, 0, 48, 40] for o in objects)


def test_colour_crops_are_preprocessed_as_openai_clip(roles, monkeypatch):
    clf = ge.ColorClassifier(str(roles / "clip"), metric="t", fix="fix", device=CPU, dtype=torch.float32)
    image = random_image(4, (30, 20))
    seen = []
    real = ge.image_embeds
    monkeypatch.setattr(ge, "image_embeds", lambda model, pixels: seen.append(pixels) or real(model, pixels))
    clf.colors(image, "car", [Obj((0, 0, 30, 10), 0.9, None)])  # a 30x10 crop: shorter side 10
    size = clf.model.config.vision_config.image_size  # 32: 30x10 -> 96x32 bicubic, centre crop at 32
    crop = image.crop((0, 0, 30, 10)).resize((96, size), Image.BICUBIC).crop((32, 0, 64, size))
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy((np.asarray(crop, dtype=np.float32) / 255 - mean) / std).permute(2, 0, 1)
    torch.testing.assert_close(seen[0][0], expected, atol=1e-5, rtol=0)
