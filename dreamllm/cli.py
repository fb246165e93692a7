"""The `dreamllm` command: `generate`, `convert`, `train` and `demo`.

Each subcommand lives beside the code it drives and exposes `add_arguments(parser)` and `run(args) -> int`. Errors a
user can fix (bad input, missing files) are printed as one line and exit with status 2, without a traceback.
"""

import argparse
import importlib
import sys

from . import __version__

SUBCOMMANDS = {
    "generate": ("dreamllm.pipelines.cli", "Write a document of text and images from a prompt."),
    "convert": ("dreamllm.conversion.cli", "Convert an original DreamLLM release into the Hugging Face layout."),
    "train": ("dreamllm.training.cli", "Train or LoRA-fine-tune DreamLLM on JSON Lines documents."),
    "evaluate": ("dreamllm.evaluation.cli", "Score a model on a benchmark (VQA, captions, POPE, MMBench, FID)."),
    "demo": ("dreamllm.demo.cli", "Chat with DreamLLM in the browser: answers stream in, images drawn in place."),
}
USER_ERRORS = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamllm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("dreamllm: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"dreamllm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
