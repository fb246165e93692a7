"""`dreamllm generate`: write a document of text and images from a prompt, as `index.html`, `document.md` and PNGs."""

import argparse
import html
from pathlib import Path

import torch

from dreamllm.processing.images import open_image
from .pipeline_dreamllm import DreamLLMPipeline

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser):
    """Declares the arguments of `dreamllm generate`."""
    parser.add_argument("prompt", metavar="PROMPT", help="What to write about; it becomes the user turn of the chat.")
    parser.add_argument(
        "--model", metavar="DIR_OR_REPO",
        help="A saved DreamLLM pipeline: a local folder or a Hub repo id (default: the built-in toy-world model).",
    )
    parser.add_argument(
        "--image", metavar="PATH", dest="images", action="extend", nargs="+", type=Path, default=[],
        help="An image for the model to read (repeat for several).",
    )
    parser.add_argument("--output", metavar="DIR", type=Path, default=Path("dreamllm-output"),
                        help="Folder for index.html, document.md and the PNG images (default: %(default)s).")
    parser.add_argument("--seed", metavar="N", type=whole_number(0), help="Seed of all randomness (default: random).")
    parser.add_argument("--steps", metavar="N", type=whole_number(1), default=50,
                        help="Denoising steps per image (default: %(default)s).")
    parser.add_argument("--guidance", metavar="X", type=non_negative_number, default=7.5,
                        help="Classifier-free guidance scale of the images (default: %(default)s).")
    parser.add_argument("--max-new-tokens", metavar="N", type=whole_number(1), default=256,
                        help="Most tokens the model writes (default: %(default)s).")
    parser.add_argument("--max-images", metavar="N", type=whole_number(0), default=4,
                        help="Most images in the document (default: %(default)s).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Where to run (default: %(default)s).")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of every component (default: auto, the dtype the model was saved in).")
    # A bad argument is reported in one line, like the errors of `run`, rather than after the usage text.
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")


def run(args: argparse.Namespace) -> int:
    """Loads the pipeline, writes the document and reports where it is."""
    images = [open_image(path) for path in args.images]
    print(f"Loading {args.model or 'the built-in toy-world model'} ...", flush=True)
    pipe = DreamLLMPipeline.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device)
    generator = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    output = pipe(
        args.prompt,
        images=images or None,
        generator=generator,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
    )
    write_document(output.documents[0], args.output, title=args.prompt)
    print(f"Wrote {args.output / 'index.html'}, {args.output / 'document.md'} and {len(output.images[0])} image(s)")
    return 0


def write_document(document: list, folder: Path, title: str) -> None:
    """
    Writes a document (text segments and PIL images) to `folder`: `image_<i>.png` for each image, `index.html` with the
    text as paragraphs and the images as `<img>`, and `document.md` with the same content in Markdown.
    """
    folder.mkdir(parents=True, exist_ok=True)
    html_parts, markdown_parts, num_images = [], [], 0
    for part in document:
        if isinstance(part, str):
            html_parts.append(f"<p>{html.escape(part)}</p>")
            markdown_parts.append(part)
            continue
        name = f"image_{num_images}.png"
        num_images += 1
        part.save(folder / name)
        html_parts.append(f'<img src="{name}" alt="{name}">')
        markdown_parts.append(f"![{name}]({name})")
    body = "\n".join(html_parts)
    (folder / "index.html").write_text(
        f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body>\n{body}\n</body>\n</html>\n",
        encoding="utf-8",
    )
    (folder / "document.md").write_text("\n\n".join(markdown_parts) + "\n", encoding="utf-8")


def whole_number(minimum: int):
    """An argparse type: a whole number >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def non_negative_number(text: str) -> float:
    """An argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


__all__ = ["add_arguments", "run", "write_document"]
