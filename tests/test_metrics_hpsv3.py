"""HPSv3: its resize rule, its prompt, both checkpoint layouts, and the score against upstream's forward."""

from __future__ import annotations

import hashlib

import pytest
import torch

from hpsv3_fixtures import write_base_folder, write_hpsv3_checkpoint
from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec, declared_comparability
from lpo.evals.metrics.hpsv3 import HPSv3, smart_resize, split_checkpoint
from lpo.evals.metrics.hpsv3_prompt import REWARD_TOKEN, reward_text
from metric_fixtures import random_image

PROMPTS = ["a red cat", "two small blue birds above a green tree", "a house"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpsv3")
    base, new = write_hpsv3_checkpoint(root)
    _, old = write_hpsv3_checkpoint(root, layout="old")
    return base, new, old


@pytest.fixture(scope="module")
def metric(tiny):
    base, new, _ = tiny
    return HPSv3(MetricSpec(weights=str(new), processor=str(base)))


def _images():
    return [random_image(0, (512, 512)), random_image(1, (1024, 1024)), random_image(2, (640, 480))]


def test_smart_resize_is_qwen2_vls_rule_at_256_merged_patches():
    assert smart_resize(512, 512) == (448, 448)  # 18·28 = 504 is over 200,704 px: scaled down and floored
    assert smart_resize(1024, 1024) == (448, 448)
    assert smart_resize(768, 1024) == (364, 504)  # h × w; 13 and 18 patch pairs
    assert smart_resize(100, 100) == (448, 448)  # scaled up and ceiled
    for h, w in ((333, 517), (1000, 240), (64, 900)):
        rh, rw = smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0
    with pytest.raises(LpoError, match="aspect ratio over 200"):
        smart_resize(10, 2100)


def test_reward_prompt_is_upstreams_text():
    text = reward_text("a cat")
    # SHA-256 of upstream's INSTRUCTION.format(text_prompt="a cat") + prompt_with_special_token
    assert hashlib.sha256(text.encode()).hexdigest() == "58f765b8739946ac474c741df3766ebc3df8c43e966cea2edbdce196c41a2bd4"
    assert text.endswith("Textual prompt - a cat\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n")


def test_inputs_are_one_user_turn_with_256_image_tokens(metric):
    batch = metric.inputs([random_image(0, (512, 512))], ["a cat"])
    assert batch["image_grid_thw"].tolist() == [[1, 32, 32]]  # 448 / 14 = 32 patches a side
    text = metric.tokenizer.decode(batch["input_ids"][0])
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * 256 + "<|vision_end|>" + reward_text("a cat") + "<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected


def _upstream_forward(metric, images, prompts) -> torch.Tensor:
    """Upstream Qwen2VLRewardModelBT.forward, re-typed: embeddings with the image features scattered in,
    the decoder run on embeddings alone (no input_ids, no positions), the head at the reward token."""
    batch = metric.inputs(images, prompts)
    model = metric.model
    ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    features = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    features = torch.cat(list(features), dim=0).to(embeds.dtype)
    mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, features)
    hidden = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    logits = metric.head(hidden.float())
    return logits[ids == metric.reward_token_id].view(len(images), -1)


def test_score_is_mu_of_upstreams_forward_and_batch_invariant(metric):
    images = _images()
    with torch.no_grad():
        upstream = _upstream_forward(metric, images, PROMPTS)
    scores = metric.score(images, PROMPTS)
    torch.testing.assert_close(scores, upstream[:, 0], rtol=1e-5, atol=1e-5)  # μ, not σ
    assert not torch.allclose(upstream[:, 0], upstream[:, 1])
    one_by_one = torch.cat([metric.score([i], [p]) for i, p in zip(images, PROMPTS)])
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)  # right padding changes nothing


def test_1d_positions_are_what_upstream_ran_not_the_image_grid(metric):
    # Qwen2-VL's own M-RoPE (2-D positions on image tokens) gives other scores: the test above can tell them apart
    images = _images()[:1]
    batch = metric.inputs(images, PROMPTS[:1])
    token_types = (batch["input_ids"] == metric.model.config.image_token_id).int()
    with torch.no_grad():
        hidden = metric.model(**batch, mm_token_type_ids=token_types).last_hidden_state
        grid_score = metric.head(hidden[batch["input_ids"] == metric.reward_token_id].float())[:, 0]
    assert abs(float(grid_score) - float(metric.score(images, PROMPTS[:1]))) > 1e-4


def test_both_checkpoint_layouts_load_to_the_same_scores(tiny, metric):
    base, _, old = tiny
    from_old = HPSv3(MetricSpec(weights=str(old), processor=str(base)))
    images = _images()
    torch.testing.assert_close(from_old.score(images, PROMPTS), metric.score(images, PROMPTS))


def test_split_checkpoint_maps_both_layouts():
    t = torch.zeros(1)
    new = {"model.language_model.norm.weight": t, "model.visual.merger.ln_q.weight": t, "lm_head.weight": t,
           "rm_head.0.weight": t}
    old = {"model.norm.weight": t, "visual.merger.ln_q.weight": t, "lm_head.weight": t, "rm_head.0.weight": t}
    for state in (new, old):
        backbone, head = split_checkpoint(state)
        assert sorted(backbone) == ["language_model.norm.weight", "visual.merger.ln_q.weight"]
        assert list(head) == ["0.weight"]


def test_bad_inputs_are_one_line_errors(tiny, tmp_path, metric):
    base, new, _ = tiny
    with pytest.raises(LpoError, match="hpsv3: no weights file at .*; pass --metric-weights hpsv3=PATH"):
        HPSv3(MetricSpec(weights=str(tmp_path), processor=str(base)))
    (tmp_path / "HPSv3.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LpoError, match="could not read .* as safetensors") as err:
        HPSv3(MetricSpec(weights=str(tmp_path), processor=str(base)))
    assert "\n" not in str(err.value)
    no_template = tmp_path / "no-template"
    write_base_folder(no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    import json

    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(LpoError, match="has no chat template"):
        HPSv3(MetricSpec(weights=str(new), processor=str(no_template)))
    with pytest.raises(LpoError, match="does not hold the reward token exactly once"):
        metric.score([random_image(0, (64, 64))], [f"a cat {REWARD_TOKEN}"])


def test_registered_and_published():
    assert METRICS.get("hpsv3") is HPSv3
    assert declared_comparability("hpsv3", HPSv3.version)[0] == "published"
