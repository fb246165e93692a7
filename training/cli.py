"""`dreamllm train`: train a saved DreamLLM on streamed, mixed corpora (full weights or a LoRA adapter)."""

import argparse
import contextlib
import logging

EXAMPLES = """examples:
  dreamllm train --data documents.jsonl --output ./run --max-steps 200
  dreamllm train --model ./dreamllm-7b --data 'mmc4/{000..099}.jsonl@2' 'laion/{0000..0009}.tar@1' --lora --output ./adapter
  dreamllm train --data documents.jsonl --output ./run --push-to-hub my-name/dreamllm-toy-finetuned
  accelerate launch --config_file training/accelerate_configs/zero2.yaml -m dreamllm.cli train --data d.jsonl --output ./run
"""


def add_arguments(parser: argparse.ArgumentParser):
    """Adds the `train` options to `parser`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("--model", help="a saved DreamLLMPipeline folder or Hub repo id (default: the built-in toy model)")
    parser.add_argument(
        "--data", required=True, action="extend", nargs="+", metavar="[READER:]PATH[@WEIGHT]",
        help="training data: JSON Lines files, webdataset .tar shards, a datasets folder or parquet/arrow/json files "
        "(globs and quoted brace patterns allowed; READER jsonl, webdataset or hf forces one, hf:NAME is a Hub "
        "dataset); several sources are mixed by WEIGHT (default 1)",
    )
    parser.add_argument("--image-folder", help="folder that image names in the data are relative to "
                        "(default: the folder of each data file)")
    parser.add_argument("--pairs", choices=("random", "creation", "comprehension"), default="random",
                        help="what image-text pairs teach (default random: either, with probability 1/2)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loading worker processes per process (default 0)")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="examples per shuffled block (default 1000)")
    parser.add_argument("--max-consecutive-skips", type=int, default=1000, metavar="N",
                        help="stop with an error after N unusable records in a row, e.g. every image unreadable "
                        "(default 1000; scattered bad records are skipped and counted)")
    parser.add_argument("--save-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the saved weights (default float32)")
    parser.add_argument("--output", required=True, help="folder for checkpoints and the trained model")
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=2,
                        help="1: projectors and dream queries; 2: + language model; 3: instruction tuning (default 2)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter of the language model (stages 2, 3)")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (default 16; alpha is twice the rank)")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: by stage, 2e-4 with LoRA)")
    parser.add_argument("--batch-size", type=int, default=1, help="documents per device and micro-batch (default 1)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and noise (default 0)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    parser.add_argument("--save-steps", type=int, default=500, help="steps between checkpoints (default 500)")
    parser.add_argument("--logging-steps", type=int, default=10, help="steps between loss logs (default 10)")
    parser.add_argument("--condition-dropout", type=float, default=0.0, metavar="P",
                        help="train the unconditional condition of guidance on a fraction P of images (default 0)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="upload the trained pipeline or adapter and its model card to this Hub model repo")
    parser.add_argument("--license", help="the license the uploaded card declares; by default the --model folder's "
                        "(the built-in toy model's is apache-2.0)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="resume from CHECKPOINT, or from the newest complete checkpoint in --output")


@contextlib.contextmanager
def worker_errors_in_one_line():
    """
    Re-raises an error of a data loading worker (`--num-workers` above 0), whose message holds the worker's whole
    traceback, as a one-line `ValueError`: where it happened and the original error.
    """
    try:
        yield
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if not lines or "DataLoader worker" not in lines[0]:
            raise
        where = lines[0].removeprefix(f"Caught {type(error).__name__} ").rstrip(".")
        raise ValueError(f"data loading failed {where}: {lines[-1]}" if len(lines) > 1 else lines[0]) from None


@worker_errors_in_one_line()
def run(args: argparse.Namespace) -> int:
    """Trains as `args` say and saves the result in `args.output`; returns the exit status."""
    from accelerate import PartialState
    from huggingface_hub.utils import validate_repo_id

    from dreamllm.conversion.hub import card_license
    from dreamllm.training import DataSource, push_trained_to_hub, train
    from dreamllm.training.train import check_numbers

    optional = {"learning_rate": args.learning_rate} if args.learning_rate is not None else {}
    numbers = {
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "save_steps": args.save_steps,
        "logging_steps": args.logging_steps,
        "seed": args.seed,
        "dataloader_num_workers": args.num_workers,
        **optional,
    }
    check_numbers(lora_rank=args.lora_rank, shuffle_buffer=args.shuffle_buffer,
                  max_consecutive_skips=args.max_consecutive_skips, condition_dropout=args.condition_dropout, **numbers)
    if args.push_to_hub:
        validate_repo_id(args.push_to_hub)  # before training, not after it
    sources = [DataSource.parse(spec, image_folder=args.image_folder, pairs=args.pairs) for spec in args.data]
    logging.basicConfig(format="%(message)s")
    logging.getLogger("dreamllm").setLevel(logging.INFO)
    output = train(
        model=args.model,
        data=sources,
        output_dir=args.output,
        stage=args.stage,
        lora=args.lora,
        lora_rank=args.lora_rank,
        resume_from_checkpoint=args.resume,
        condition_dropout=args.condition_dropout,
        shuffle_buffer=args.shuffle_buffer,
        max_consecutive_skips=args.max_consecutive_skips,
        save_dtype=args.save_dtype,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,
        **numbers,
    )
    if PartialState().is_main_process:
        kind = "LoRA adapter (PeftModel.from_pretrained)" if args.lora else "pipeline (DreamLLMPipeline.from_pretrained)"
        print(f"Saved the trained {kind} to {output}")
        if args.push_to_hub:
            push_trained_to_hub(output, args.push_to_hub, license=card_license(args.license, args.model))
    return 0
