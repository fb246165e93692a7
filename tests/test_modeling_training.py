"""Training forward: the image and dream modules take part in every step, whatever the batch holds."""

import pytest
import torch
from PIL import Image

BATCHES = {
    "text-only": (["plain text to learn", "and more"], 0),
    "image-only": (["read <image> and say", "also <image> here"], 2),
    "dream-only": (["draw <dream> now", "plain"], 0),
    "mixed": (["read <image> then draw <dream>", "text"], 1),
}


def images(count):
    generator = torch.Generator().manual_seed(count)
    pixels = torch.randint(0, 256, (count, 16, 16, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels] or None


def batch_inputs(processor, kind):
    texts, num_images = BATCHES[kind]
    return processor(text=texts, images=images(num_images), return_tensors="pt")


def outputs_and_gradients(model, inputs, training):
    model.train(training)
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs, labels=inputs["input_ids"])
    loss = outputs.loss
    if outputs.dream_conditions is not None:
        loss = loss + outputs.dream_conditions.square().mean()
    loss.backward()
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return outputs, gradients


def unused_path_prefixes(kind):
    vision = ("model.vision_tower.", "model.vision_projector.")
    dream = ("model.dream_queries.", "model.dream_projector.")
    return {"text-only": vision + dream, "image-only": dream, "dream-only": vision, "mixed": ()}[kind]


@pytest.mark.parametrize("kind", list(BATCHES))
def test_training_forward_gives_the_same_outputs_and_gradients_plus_zeros_for_unused_modules(tiny, kind):
    model, processor = tiny
    inputs = batch_inputs(processor, kind)
    plain_outputs, plain_gradients = outputs_and_gradients(model, inputs, training=False)
    outputs, gradients = outputs_and_gradients(model, inputs, training=True)

    assert torch.equal(outputs.logits, plain_outputs.logits)
    assert torch.equal(outputs.loss, plain_outputs.loss)
    if kind in ("dream-only", "mixed"):
        assert torch.equal(outputs.dream_conditions, plain_outputs.dream_conditions)
    for name, gradient in plain_gradients.items():
        assert torch.equal(gradients[name], gradient), name
    added = gradients.keys() - plain_gradients.keys()
    unused = unused_path_prefixes(kind)
    assert all(name.startswith(unused) for name in added)
    assert all(not gradients[name].any() for name in added)
    if unused:
        assert added


def test_every_batch_kind_gives_gradients_to_the_same_parameters(tiny):
    model, processor = tiny
    parameter_sets = {
        kind: frozenset(outputs_and_gradients(model, batch_inputs(processor, kind), training=True)[1])
        for kind in BATCHES
    }
    assert len(set(parameter_sets.values())) == 1
    trained = parameter_sets["text-only"]
    for module in ("vision_projector", "dream_queries", "dream_projector", "language_model"):
        names = {name for name, _ in model.named_parameters() if name.startswith(f"model.{module}.")}
        assert names <= trained, module
    feature_layers = model.config.vision_config.num_hidden_layers + 1 + model.config.vision_feature_layer
    for layer in range(feature_layers):
        assert f"model.vision_tower.encoder.layers.{layer}.mlp.fc1.weight" in trained


def test_a_frozen_vision_tower_still_runs_on_text_only_training_batches(tiny):
    model, processor = tiny
    model.model.vision_tower.requires_grad_(False)
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    _, gradients = outputs_and_gradients(model, batch_inputs(processor, "text-only"), training=True)
    assert calls == [1]
    assert not any(name.startswith("model.vision_tower.") for name in gradients)
    assert not gradients["model.vision_projector.weight"].any()


def test_evaluation_and_no_grad_run_no_unused_module(tiny):
    model, processor = tiny
    inputs = batch_inputs(processor, "text-only")
    calls = []
    for module in (model.model.vision_tower, model.model.dream_projector):
        module.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    model(**inputs)
    model.train()
    with torch.no_grad():
        model(**inputs)
    assert calls == []
