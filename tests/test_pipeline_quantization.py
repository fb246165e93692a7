"""The language model quantized on the CPU (optimum-quanto int8, torchao int8) through `quantization_config`, a
transformers config or a diffusers PipelineQuantizationConfig: the linear layers of the `model` component (language model,
vision tower, projectors; not the LM head) hold quantized weights, the UNet and VAE do not, and the built-in toy model
still draws what it is asked for."""

import pytest
import torch
from diffusers.quantizers import PipelineQuantizationConfig
from transformers import QuantoConfig, TorchAoConfig

from dreamllm import DreamLLMPipeline
from dreamllm import toy_world

pytest.importorskip("optimum.quanto")
pytest.importorskip("torchao")

STEPS = 20
CAPTIONS = [("red", "circle"), ("green", "square"), ("blue", "triangle")]

pytestmark = pytest.mark.usefixtures("single_thread")


def torchao_int8():
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [layer.weight for layer in module.modules() if isinstance(layer, torch.nn.Linear)]


def is_quantized(weight: torch.Tensor) -> bool:
    """Quantized weights are tensor subclasses holding integer data and scales (quanto and torchao alike)."""
    return hasattr(weight, "__tensor_flatten__")


@pytest.mark.parametrize(
    "quantization_config",
    [
        QuantoConfig(weights="int8"),
        PipelineQuantizationConfig(quant_mapping={"model": QuantoConfig(weights="int8")}),
        torchao_int8(),
    ],
    ids=["quanto-int8", "pipeline-config-quanto-int8", "torchao-int8"],
)
def test_quantized_language_model_still_draws_the_toy_pictures(quantization_config):
    pipe = DreamLLMPipeline.from_pretrained(quantization_config=quantization_config)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model.is_quantized
    for part in ("language_model", "vision_tower"):
        layers = linear_weights(getattr(pipe.model.model, part))
        assert layers and all(is_quantized(weight) for weight in layers), part
    assert not is_quantized(pipe.model.lm_head.weight)
    assert not any(is_quantized(weight) for component in (pipe.unet, pipe.vae) for weight in linear_weights(component))
    prompts = [f"A picture of {toy_world.short_description(*pair)}." for pair in CAPTIONS]
    generators = [torch.Generator().manual_seed(10_000 + index) for index in range(len(prompts))]
    images = pipe.text_to_image(prompts, num_inference_steps=STEPS, generator=generators).images
    assert [toy_world.analyze_image(image) for image in images] == CAPTIONS


def test_pipeline_config_quantizes_each_component_it_maps():
    from diffusers import QuantoConfig as DiffusersQuantoConfig

    mapping = {"model": QuantoConfig(weights="int8"), "unet": DiffusersQuantoConfig(weights_dtype="int8")}
    pipe = DreamLLMPipeline.from_pretrained(quantization_config=PipelineQuantizationConfig(quant_mapping=mapping))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model.is_quantized and pipe.unet.is_quantized
    assert all(is_quantized(weight) for weight in linear_weights(pipe.unet))
    assert not any(is_quantized(weight) for weight in linear_weights(pipe.vae))
    image = pipe.text_to_image("A picture of a red circle.", num_inference_steps=STEPS,
                               generator=torch.Generator().manual_seed(10_000)).images[0]
    assert toy_world.analyze_image(image) == ("red", "circle")
