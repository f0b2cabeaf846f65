"""Batched greedy generation on the tiny model: the same answers as one by one, stop and length accounting."""

from __future__ import annotations

import pytest

from kto_pipeline.evaluation.generate import Generation, generate, prompt_ids

torch = pytest.importorskip("torch")

PROMPTS = [
    "Hi",
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is KTO?"}],
    "What is the capital of France? Please answer in one short sentence, thank you.",
    [{"role": "user", "content": "2 + 2 = ?"}],
    "Tell me about photosynthesis and why plants need light, water and carbon dioxide to make sugar.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from kto_pipeline.inference import KTOInference

    bot = KTOInference(tiny_model_dir, device="cpu")
    return bot, bot.backend.model, bot.backend.tokenizer


def test_batched_answers_are_the_one_by_one_answers(tiny):
    _, model, tok = tiny
    batched = generate(model, tok, PROMPTS, max_new_tokens=16, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=16, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(g, Generation) and g.tokens == 16 and not g.stopped for g in batched)  # random weights
    assert len({g.text for g in batched}) > 1  # answers depend on the prompt (padding did not wipe it out)


def test_same_answer_as_kto_inference_greedy_chat(tiny):
    bot, model, tok = tiny
    (g,) = generate(model, tok, [PROMPTS[1]], max_new_tokens=12)
    assert g.text == bot.chat(PROMPTS[1], temperature=0, max_new_tokens=12)
    # a string prompt is one user turn under the chat template, as in training and in KTOInference.generate
    assert prompt_ids(tok, "Hi") == prompt_ids(tok, [{"role": "user", "content": "Hi"}])


def test_stopping_by_itself_and_token_counts(tiny):
    _, model, tok = tiny
    free = generate(model, tok, ["Hi"], max_new_tokens=8)[0]
    ids = tok(free.text, add_special_tokens=False)["input_ids"]
    new = model.generate(
        input_ids=torch.tensor([prompt_ids(tok, "Hi")]), max_new_tokens=8, do_sample=False, pad_token_id=0
    )[0, len(prompt_ids(tok, "Hi")) :].tolist()
    assert ids and new
    eos = model.generation_config.eos_token_id
    try:  # make the model's 4th greedy token a stop token: the answer is the 3 tokens before it
        model.generation_config.eos_token_id = [eos, new[3]]
        first = new.index(new[3])
        (g,) = generate(model, tok, ["Hi"], max_new_tokens=8)
        assert g.stopped and g.tokens == first and g.text == tok.decode(new[:first], skip_special_tokens=True)
        model.generation_config.eos_token_id = [eos, new[0]]
        (g,) = generate(model, tok, ["Hi"], max_new_tokens=8)
        assert g == Generation("", True, 0)
    finally:
        model.generation_config.eos_token_id = eos


def test_bad_settings_fail_fast(tiny):
    _, model, tok = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, ["Hi"], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tok, ["Hi"], batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batched_answers_are_the_one_by_one_answers(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to("cuda")
    batched = generate(model, tok, PROMPTS, max_new_tokens=16, batch_size=5)
    assert batched == [generate(model, tok, [p], max_new_tokens=16)[0] for p in PROMPTS]
