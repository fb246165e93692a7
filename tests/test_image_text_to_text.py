"""transformers' own `image-text-to-text` pipeline answers questions about images with a saved DreamLLM."""

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline


@pytest.fixture()
def saved(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path


def picture():
    return Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 20, 3), dtype=np.uint8))


def expected_answer(model, processor, inputs):
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_chat_form_appends_the_models_answer(tiny, saved):
    model, processor = tiny
    image = picture()
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]
    answer = pipeline("image-text-to-text", model=str(saved))(text=messages, max_new_tokens=6)[0]["generated_text"]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert answer[:-1] == messages
    assert answer[-1] == {"role": "assistant", "content": expected_answer(model, processor, inputs)}


def test_plain_form_continues_the_prompt(tiny, saved):
    model, processor = tiny
    image, prompt = picture(), "<image> What is it?"
    answer_pipeline = pipeline("image-text-to-text", model=str(saved))
    output = answer_pipeline(images=image, text=prompt, max_new_tokens=6, return_full_text=False)[0]
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    assert output["generated_text"].strip() == expected_answer(model, processor, inputs).strip()
    full = answer_pipeline(images=image, text=prompt, max_new_tokens=6)[0]
    assert full["generated_text"].startswith(prompt)
