"""The DreamLLM tokenizer reproduces the original (transformers 4.35 slow, legacy) Llama tokenization exactly.

Why this needs its own conversion (see `processing/tokenization_dreamllm.py` for the full story): transformers 5's
`LlamaTokenizer` pre-tokenizes with `Metaspace`, which prepends the dummy "▁" only to chunks that do not already
start with a space, while sentencepiece prepends it to every chunk. `test_default_transformers_conversion_differs`
pins down which fixture cases that changes.
"""

import hashlib
import json
import random
import re
import shutil
import time

import pytest
from sentencepiece import SentencePieceProcessor
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoTokenizer, LlamaTokenizer
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from dreamllm.processing.tokenization_dreamllm import (
    DREAMLLM_ADDED_TOKENS,
    DREAMLLM_SPECIAL_TOKENS,
    PAD_TOKEN,
    RELEASED_ADDED_TOKEN_ORDER,
    add_dreamllm_special_tokens,
    build_tiny_tokenizer,
    convert_original_tokenizer,
)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ----------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(official_tiny):
    return official_tiny / "checkpoint"


@pytest.fixture(scope="module")
def golden_cases(official_tiny):
    """The 8 tokenizer cases of the fixture, with the abbreviated case rebuilt and checked against its hash."""
    cases = json.loads((official_tiny / "golden" / "meta.json").read_text())["tokenizer_cases"]
    for case in cases:
        if case["text"] is None:
            case["text"] = case["text_abbrev"].replace("{<im_patch> x 256}", "<im_patch>" * 256)
        assert hashlib.sha256(case["text"].encode("utf-8")).hexdigest() == case["sha256_text"]
    return cases


@pytest.fixture(scope="module")
def converted(checkpoint):
    return convert_original_tokenizer(checkpoint)


@pytest.fixture(scope="module")
def reloaded(converted, tmp_path_factory):
    """The converted tokenizer after `save_pretrained` and a plain `AutoTokenizer.from_pretrained`."""
    directory = tmp_path_factory.mktemp("converted")
    converted.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def sentencepiece(checkpoint):
    return SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))


@pytest.fixture(scope="module")
def checkpoint_added_ids(checkpoint):
    return json.loads((checkpoint / "added_tokens.json").read_text())


def copy_tokenizer_files(checkpoint, directory):
    """A copy of the checkpoint's slow-tokenizer files (only those) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(checkpoint / name, directory / name)
    return directory


def legacy_reference_ids(sp: SentencePieceProcessor, text: str, special_ids: dict[str, int]) -> list[int]:
    """
    The legacy slow-tokenizer rule, written directly on sentencepiece: split the text on the special tokens
    (longest first), sentencepiece-encode every non-empty chunk on its own, and put BOS first.
    """
    pattern = "(" + "|".join(re.escape(token) for token in sorted(special_ids, key=len, reverse=True)) + ")"
    ids = [sp.bos_id()]
    for chunk in re.split(pattern, text):
        if chunk in special_ids:
            ids.append(special_ids[chunk])
        elif chunk:
            ids.extend(sp.encode(chunk))
    return ids


FRAGMENTS = (
    # special tokens and near misses
    *DREAMLLM_ADDED_TOKENS, "<s>", "</s>", "<unk>", "<image", "image>", "<dream_>", "</s", "<s >", "[PAD", "<0x41>",
    # whitespace
    " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\r\n", "\xa0", "\u3000", "▁", "▁▁",
    # words, numbers, punctuation
    "A", "cat", "photo", "the", "and", "Hello", "world", "USER:", "ASSISTANT:", "x", "end", "text", "tab", "2024",
    "3.14", ",", ".", "?", "!", "'", '"', "-", "<", ">", "_",
    # unicode
    "café", "naïve", "東京", "😀", "Ω", "ß", "e\u0301", "ｆｕｌｌ", "Привет", "👩‍💻",
)  # fmt: skip


def random_texts(count: int, seed: int) -> list[str]:
    """`count` random strings mixing special tokens, spaces, newlines, words and unicode, reproducibly."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12))) for _ in range(count)]


# ----------------------------------------------------------------------------------------------------------------
# The converted original tokenizer
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(8))
def test_golden_case_direct(converted, golden_cases, index):
    case = golden_cases[index]
    ids = converted(case["text"])["input_ids"]
    assert ids == case["input_ids"]
    assert converted.convert_ids_to_tokens(ids) == case["tokens"]


@pytest.mark.parametrize("index", range(8))
def test_golden_case_after_save_and_auto_reload(reloaded, golden_cases, index):
    case = golden_cases[index]
    ids = reloaded(case["text"])["input_ids"]
    assert ids == case["input_ids"]
    assert reloaded.convert_ids_to_tokens(ids) == case["tokens"]


def test_saved_files_are_standard(converted, tmp_path):
    converted.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # not "LlamaTokenizer": transformers 5 would rebuild its Metaspace pipeline and drop the legacy normalizer
    assert config["tokenizer_class"] == "TokenizersBackend"
    assert "auto_map" not in config
    assert config["image_start_token"] == "<im_start>"
    backend = json.loads((tmp_path / "tokenizer.json").read_text())
    assert backend["pre_tokenizer"] is None
    assert [step["type"] for step in backend["normalizer"]["normalizers"]] == ["Prepend", "Replace"]


def test_reload_next_to_a_llama_model_config(converted, golden_cases, tmp_path):
    """Even in a folder whose model config maps to `LlamaTokenizer`, the saved tokenizer loads unchanged."""
    converted.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tokenizer) is TokenizersBackend
    assert all(tokenizer(case["text"])["input_ids"] == case["input_ids"] for case in golden_cases)


def test_special_token_ids_match_the_checkpoint(converted, reloaded, checkpoint, checkpoint_added_ids):
    model_config = json.loads((checkpoint / "config.json").read_text())["special_tokens2ids_dict"]
    config_ids = {token: token_id for token, token_id in model_config.items() if isinstance(token_id, int)}
    config_ids.update(model_config["additional_special_tokens"])
    assert set(checkpoint_added_ids) == set(DREAMLLM_ADDED_TOKENS)
    for tokenizer in (converted, reloaded):
        assert {token: tokenizer.convert_tokens_to_ids(token) for token in checkpoint_added_ids} == checkpoint_added_ids
        assert {token: tokenizer.convert_tokens_to_ids(token) for token in config_ids} == config_ids
        assert len(tokenizer) == 608
    # the checkpoint's ids are not in list order, so nothing may assume they are
    assert [checkpoint_added_ids[token] for token in DREAMLLM_ADDED_TOKENS] != sorted(checkpoint_added_ids.values())


@pytest.mark.parametrize("which", ["converted", "reloaded"])
def test_named_special_tokens(request, checkpoint_added_ids, which):
    tokenizer = request.getfixturevalue(which)
    for name, token in DREAMLLM_SPECIAL_TOKENS.items():
        assert getattr(tokenizer, name) == token
        assert getattr(tokenizer, f"{name}_id") == checkpoint_added_ids[token]
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == checkpoint_added_ids[PAD_TOKEN]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert set(DREAMLLM_ADDED_TOKENS) <= set(tokenizer.all_special_tokens)


@pytest.mark.parametrize("which", ["converted", "reloaded"])
def test_settings_from_the_checkpoint(request, which):
    tokenizer = request.getfixturevalue(which)
    assert tokenizer.model_max_length == 512  # the fixture's tokenizer_config.json (2048 in real checkpoints)
    assert tokenizer.padding_side == "left"  # for generation; the original trained with right padding
    ids = tokenizer("A cat")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    batch = tokenizer(["A", "A photo of a cat"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id and batch["attention_mask"][0][0] == 0


@pytest.mark.parametrize("which", ["converted", "reloaded"])
def test_random_texts_match_a_sentencepiece_reference(request, sentencepiece, checkpoint_added_ids, which):
    tokenizer = request.getfixturevalue(which)
    special_ids = {"<unk>": 0, "<s>": 1, "</s>": 2, **checkpoint_added_ids}
    texts = random_texts(300, seed=0)
    assert sum(any(token in text for token in special_ids) for text in texts) > 150
    got = tokenizer(texts)["input_ids"]
    for text, ids in zip(texts, got, strict=True):
        assert ids == legacy_reference_ids(sentencepiece, text, special_ids), text


def test_decode_skipping_special_tokens_matches_sentencepiece(converted, sentencepiece):
    special = set(converted.all_special_ids)
    for text in random_texts(200, seed=1):
        ids = converted(text)["input_ids"]
        expected = sentencepiece.decode([token_id for token_id in ids if token_id not in special])
        assert converted.decode(ids, skip_special_tokens=True) == expected, text


def test_decode_gives_readable_text(converted, golden_cases):
    assert converted.decode(golden_cases[1]["input_ids"], skip_special_tokens=True) == "A photo of a cat"
    # each chunk after a special token carries a dummy-prefix space, as in the original
    assert converted.decode(golden_cases[2]["input_ids"], skip_special_tokens=True) == (
        "A photo of a cat   and then generate one "
    )
    with_special = converted.decode(golden_cases[2]["input_ids"])
    assert with_special == "<s> A photo of a cat <image>  and then generate one <dream>"
    assert converted.decode(golden_cases[5]["input_ids"], skip_special_tokens=True) == golden_cases[5]["text"]


def test_default_transformers_conversion_differs(checkpoint, golden_cases, tmp_path):
    """Documents the problem: transformers 5's own conversion misses a "▁" on chunks that start with a space."""
    tokenizer = AutoTokenizer.from_pretrained(copy_tokenizer_files(checkpoint, tmp_path))
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert isinstance(tokenizer.backend_tokenizer.pre_tokenizer, pre_tokenizers.Metaspace)
    differing = [i for i, case in enumerate(golden_cases) if tokenizer(case["text"])["input_ids"] != case["input_ids"]]
    assert differing == [2, 3, 6, 7]
    # case 2: " and then ..." after <image> loses its dummy prefix
    assert tokenizer.tokenize(" and") == ["▁and"]


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_missing_tokenizer_model(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    (directory / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        convert_original_tokenizer(directory)


def test_missing_tokenizer_config(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    (directory / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        convert_original_tokenizer(directory)


def test_corrupt_tokenizer_model(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    (directory / "tokenizer.model").write_bytes(b"this is not a sentencepiece model" * 10)
    with pytest.raises(ValueError, match="tokenizer.model"):
        convert_original_tokenizer(directory)


def test_corrupt_tokenizer_config(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    (directory / "tokenizer_config.json").write_text('{"add_bos_token": tru')
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        convert_original_tokenizer(directory)


def test_missing_special_token(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"].pop("607")  # <dream>
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    added = json.loads((directory / "added_tokens.json").read_text())
    added.pop("<dream>")
    (directory / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match="<dream>"):
        convert_original_tokenizer(directory)


def test_conflicting_ids(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    added = json.loads((directory / "added_tokens.json").read_text())
    added["<image>"], added["<dream>"] = added["<dream>"], added["<image>"]
    (directory / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(ValueError, match="added_tokens.json"):
        convert_original_tokenizer(directory)


def test_ids_from_added_tokens_json_alone(checkpoint, checkpoint_added_ids, golden_cases, tmp_path):
    """Checkpoints saved before transformers 4.34 have no `added_tokens_decoder`: added_tokens.json suffices."""
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = convert_original_tokenizer(directory)
    assert tokenizer.image_token_id == checkpoint_added_ids["<image>"]
    assert all(tokenizer(case["text"])["input_ids"] == case["input_ids"] for case in golden_cases)


def test_non_legacy_checkpoint_is_refused(checkpoint, tmp_path):
    directory = copy_tokenizer_files(checkpoint, tmp_path / "ckpt")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["legacy"] = False
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="legacy"):
        convert_original_tokenizer(directory)


# ----------------------------------------------------------------------------------------------------------------
# A new DreamLLM from a plain Llama tokenizer
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_llama(checkpoint, tmp_path_factory):
    """The fixture's sentencepiece model loaded as transformers 5 loads a plain Llama/Vicuna tokenizer."""
    directory = tmp_path_factory.mktemp("plain_llama")
    shutil.copy(checkpoint / "tokenizer.model", directory / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(directory)


def test_add_dreamllm_special_tokens(plain_llama, sentencepiece):
    tokenizer = add_dreamllm_special_tokens(plain_llama)
    assert len(plain_llama) == 600  # the input is left unchanged
    expected_ids = {token: 600 + i for i, token in enumerate(DREAMLLM_ADDED_TOKENS)}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in DREAMLLM_ADDED_TOKENS} == expected_ids
    assert len(tokenizer) == 608
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.image_patch_token_id == expected_ids["<im_patch>"]
    special_ids = {"<unk>": 0, "<s>": 1, "</s>": 2, **expected_ids}
    for text in random_texts(100, seed=2):
        assert tokenizer(text)["input_ids"] == legacy_reference_ids(sentencepiece, text, special_ids), text


def test_add_dreamllm_special_tokens_keeps_existing_ids(converted, golden_cases):
    tokenizer = add_dreamllm_special_tokens(converted)
    assert len(tokenizer) == len(converted)
    assert all(tokenizer(case["text"])["input_ids"] == case["input_ids"] for case in golden_cases)


def test_add_dreamllm_special_tokens_survives_reload(plain_llama, tmp_path):
    tokenizer = add_dreamllm_special_tokens(plain_llama)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "A cat <image> and <dream_start> x<im_end>  end"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.dream_start_token_id == tokenizer.dream_start_token_id


def test_add_dreamllm_special_tokens_refuses_byte_level_tokenizers():
    backend = Tokenizer(BPE(vocab={"a": 0, "b": 1}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.decoder = decoders.ByteLevel()
    with pytest.raises(ValueError, match="sentencepiece-style"):
        add_dreamllm_special_tokens(TokenizersBackend(tokenizer_object=backend))


# ----------------------------------------------------------------------------------------------------------------
# The tiny tokenizer
# ----------------------------------------------------------------------------------------------------------------


def test_tiny_tokenizer_is_small_fast_and_deterministic():
    start = time.perf_counter()
    tokenizer = build_tiny_tokenizer()
    assert time.perf_counter() - start < 1.0
    assert 300 <= len(tokenizer) <= 500
    assert max(tokenizer.get_vocab().values()) == len(tokenizer) - 1
    assert tokenizer.backend_tokenizer.to_str() == build_tiny_tokenizer().backend_tokenizer.to_str()


def test_tiny_tokenizer_special_tokens():
    tokenizer = build_tiny_tokenizer(model_max_length=77)
    assert tokenizer.model_max_length == 77
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in DREAMLLM_ADDED_TOKENS}
    base = len(tokenizer) - len(DREAMLLM_ADDED_TOKENS)
    assert sorted(ids.values()) == list(range(base, len(tokenizer)))
    assert [ids[token] for token in RELEASED_ADDED_TOKEN_ORDER] == list(range(base, len(tokenizer)))
    for name, token in DREAMLLM_SPECIAL_TOKENS.items():
        assert getattr(tokenizer, name) == token and getattr(tokenizer, f"{name}_id") == ids[token]
    assert tokenizer.pad_token_id == ids[PAD_TOKEN]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("a cat")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids


def test_tiny_tokenizer_encodes_any_text_and_decodes_it_back():
    tokenizer = build_tiny_tokenizer()
    for text in ["A photo of a cat", "Numbers 2024, café 東京 😀\n\ttab  x ", "Привет 👩‍💻", "x" * 40]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.tokenize("a photo of a cat") == ["▁a", "▁photo", "▁of", "▁a", "▁cat"]


def test_tiny_tokenizer_has_the_legacy_chunk_behaviour():
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.tokenize("a cat <image> and<im_end>then <dream_start> <dream_end>") == [
        "▁a", "▁cat", "▁", "<image>", "▁", "▁and", "<im_end>", "▁then", "▁", "<dream_start>", "▁▁", "<dream_end>",
    ]  # fmt: skip


def test_tiny_tokenizer_survives_reload(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<dream_start>a red ball<dream_end> <im_start> x <im_end>text <im_patch><im_patch> end"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert len(reloaded) == len(tokenizer)
    assert reloaded.image_end_token_id == tokenizer.image_end_token_id


DAMAGED_TOKENIZER_FILES = [
    ("truncated", lambda text: text[:500], "is not a valid JSON file"),
    ("empty", lambda text: "", "is not a valid JSON file"),
    ("not a tokenizer", lambda text: '{"model": 1}', "is not a tokenizers file"),
    ("not UTF-8", lambda text: "\udcff", "is not a valid JSON file"),
]


def damage(path, change):
    path.write_bytes(change(path.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("name, change, message", DAMAGED_TOKENIZER_FILES)
def test_a_damaged_tokenizer_json_is_named_when_loading_the_processor(tmp_path, name, change, message):
    from transformers import AutoProcessor

    from dreamllm import DreamLLMProcessor
    from dreamllm.testing import tiny_processor

    tiny_processor().save_pretrained(tmp_path)
    damage(tmp_path / "tokenizer.json", change)
    for loader in (DreamLLMProcessor, AutoProcessor):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer.json")) + " " + message):
            loader.from_pretrained(tmp_path)


def test_a_damaged_processor_config_is_named(tmp_path):
    from dreamllm import DreamLLMProcessor
    from dreamllm.testing import tiny_processor

    tiny_processor().save_pretrained(tmp_path)
    damage(tmp_path / "tokenizer_config.json", lambda text: text[:-3])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer_config.json")) + " is not a valid JSON"):
        DreamLLMProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("name, change, message", DAMAGED_TOKENIZER_FILES[::2])
def test_a_damaged_tokenizer_json_is_named_when_loading_the_pipeline(tmp_path, name, change, message):
    from dreamllm import DreamLLMPipeline
    from dreamllm.testing import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path)
    damage(tmp_path / "tokenizer.json", change)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer.json")) + " is not"):
        DreamLLMPipeline.from_pretrained(tmp_path)
