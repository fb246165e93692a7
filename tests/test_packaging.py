"""`pip install .` ships one import package, `dreamllm`, that works outside the source tree."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_dreamllm_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO_ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    top_level = {path.name for path in target.iterdir() if not path.name.endswith(".dist-info")}
    assert top_level - {"bin"} == {"dreamllm"}
    subpackages = {path.name for path in (target / "dreamllm").iterdir() if (path / "__init__.py").is_file()}
    assert {"modeling_dreamllm", "processing", "pipelines", "conversion", "training", "toy_world"} <= subpackages
    assert not list((target / "dreamllm" / "training").glob("*toy*")), "toy-world code belongs to dreamllm.toy_world"
    shipped = {str(path.relative_to(target / "dreamllm" / "toy_model")) for path in (target / "dreamllm" / "toy_model").rglob("*")}
    assert {"model.safetensors", "model_index.json", "chat_template.jinja", "unet/diffusion_pytorch_model.safetensors"} <= shipped
    probe = (
        "import dreamllm, transformers; "
        "from dreamllm import DreamLLMConfig, DreamLLMForCausalLM, DreamLLMModel, DreamLLMProcessor, "
        "DreamLLMPipeline, DreamLLMPipelineOutput; "
        "print(dreamllm.__file__); "
        "print(dreamllm.TOY_MODEL_PATH); "
        "print(transformers.AutoConfig.for_model('dreamllm').__class__.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
    )
    module_file, toy_model_path, config_class = result.stdout.split()
    assert module_file.startswith(str(target)) and toy_model_path.startswith(str(target))
    assert config_class == "DreamLLMConfig"
