"""`dreamllm demo`: start the Gradio chat app on a model (the built-in toy model by default)."""

import argparse

import torch

from dreamllm.pipelines.cli import check_device_available, device_name, load_pipeline

EXAMPLES = """examples:
  dreamllm demo                                   # the built-in toy model on http://127.0.0.1:7860
  dreamllm demo --model ./my-dreamllm --port 8080 --device cuda
"""


def add_arguments(parser: argparse.ArgumentParser):
    """Declares the arguments of `dreamllm demo`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--model", metavar="DIR_OR_REPO",
        help="A saved DreamLLM pipeline: a local folder or a Hub repo id (default: the built-in toy-world model).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default: %(default)s).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on (default: %(default)s).")
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Where to run: cpu, cuda, cuda:N, mps, ... (default: %(default)s).")
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")


def run(args: argparse.Namespace) -> int:
    """Loads the model once and serves the app until interrupted."""
    try:
        from .app import DemoApp
    except ImportError as error:
        raise ValueError(f"the demo needs Gradio: pip install 'dreamllm[demo]' ({error})") from error
    check_device_available(args.device)
    print(f"Loading {args.model or 'the built-in toy-world model'} ...", flush=True)
    pipe = load_pipeline(args.model, args.device)
    DemoApp(pipe).launch(args.host, args.port)
    return 0


__all__ = ["add_arguments", "run"]
