"""DreamLLM's tokenizer: the original legacy Llama tokenization, as a standard transformers 5 `tokenizer.json`.

The released DreamLLM was trained with transformers 4.35's *slow* sentencepiece `LlamaTokenizer` (`legacy=True`,
BOS added, no EOS) plus eight added special tokens. That tokenizer splits the text on the added tokens and
sentencepiece-encodes every remaining chunk on its own, and sentencepiece always prepends its dummy prefix "▁" to a
chunk. So `"cat <image> and"` becomes `▁c at ▁ <image> ▁ ▁and`: the chunk `" and"` reads `"▁▁and"`, and a lone space
between two special tokens becomes the single piece `▁▁`.

Why transformers 5's own conversion of the same `tokenizer.model` gives other ids:
    transformers 5 has no slow Llama tokenizer any more. Its `LlamaTokenizer` is a `tokenizers` pipeline with no
    normalizer and the pre-tokenizer `Metaspace(prepend_scheme="always")` (`"first"` when `legacy=False`).
    `Metaspace` replaces spaces with "▁" and then prepends "▁" only if the chunk does *not already start with* "▁",
    whereas sentencepiece prepends it unconditionally. Every chunk that starts with a space therefore loses one "▁":
    in the fixture's cases 2, 3 and 6 the text right after a special token (`" and"` → `▁and` instead of `▁ ▁and`,
    `" "` → `▁` instead of `▁▁`), and in case 7 the prompt's leading space (`" A chat"` → `▁A` instead of `▁ ▁A`).
    With `legacy=False` the chunks after special tokens get no prefix at all. Moreover, when it loads a
    `tokenizer.json` under `tokenizer_class: "LlamaTokenizer"`, transformers 5 keeps only its vocabulary and merges
    and rebuilds that `Metaspace` pipeline, so a corrected pipeline must not be saved under that class name.

What this module builds instead:
    a byte-fallback BPE `tokenizers.Tokenizer` whose *normalizer* is `Prepend("▁")` + `Replace(" ", "▁")`, with no
    pre-tokenizer. `tokenizers` extracts the (non-normalized) added tokens first and normalizes each remaining
    chunk separately, and `Prepend` always prepends to a non-empty chunk: exactly sentencepiece's per-chunk dummy
    prefix. It is wrapped in the generic `TokenizersBackend` (saved as `tokenizer_class: "TokenizersBackend"`), so
    `AutoTokenizer.from_pretrained` reloads the `tokenizer.json` verbatim, with no custom code.

The DreamLLM tokens are registered as *named* special tokens (`tokenizer.image_token`, `tokenizer.image_token_id`,
`tokenizer.dream_start_token_id`, ...), which survive `save_pretrained` / `AutoTokenizer.from_pretrained`.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from transformers.tokenization_utils_tokenizers import TokenizersBackend

__all__ = [
    "DREAMLLM_ADDED_TOKENS",
    "DREAMLLM_SPECIAL_TOKENS",
    "PAD_TOKEN",
    "RELEASED_ADDED_TOKEN_ORDER",
    "add_dreamllm_special_tokens",
    "build_tiny_tokenizer",
    "convert_original_tokenizer",
]

SPIECE_UNDERLINE = "▁"

PAD_TOKEN = "[PAD]"

# Attribute name on the tokenizer -> token string. `tokenizer.<name>` gives the token, `tokenizer.<name>_id` its id.
DREAMLLM_SPECIAL_TOKENS = {
    "image_token": "<image>",
    "image_patch_token": "<im_patch>",
    "image_start_token": "<im_start>",
    "image_end_token": "<im_end>",
    "dream_token": "<dream>",
    "dream_start_token": "<dream_start>",
    "dream_end_token": "<dream_end>",
}

# The eight tokens DreamLLM adds to the base vocabulary, in the order of the original `special_tokens_dict`.
DREAMLLM_ADDED_TOKENS = (PAD_TOKEN, *DREAMLLM_SPECIAL_TOKENS.values())

# The order in which transformers 4.35 assigned ids to them in the released checkpoints (it added the additional
# special tokens from a set). The tiny tokenizer uses it too, so code that assumes list order fails on it.
RELEASED_ADDED_TOKEN_ORDER = (
    PAD_TOKEN,
    "<im_start>",
    "<dream_end>",
    "<dream_start>",
    "<im_patch>",
    "<im_end>",
    "<image>",
    "<dream>",
)

_NORMAL_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL

# Words whose "▁"-prefixed spellings become multi-character pieces of the tiny tokenizer's vocabulary.
_TINY_WORDS = (
    "a", "an", "and", "answer", "assistant", "ball", "cat", "dog", "draw", "dream", "generate", "image", "in",
    "is", "of", "on", "one", "photo", "picture", "red", "the", "then", "this", "to", "user", "what", "with",
)  # fmt: skip


def _legacy_normalizer() -> normalizers.Normalizer:
    """The per-chunk sentencepiece dummy prefix: prepend "▁" to every non-empty chunk, then spaces become "▁"."""
    return normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)])


def _legacy_decoder() -> decoders.Decoder:
    """Sentencepiece-style decoding: "▁" back to spaces, byte pieces back to UTF-8, then drop the first dummy prefix."""
    return decoders.Sequence(
        [
            decoders.Replace(SPIECE_UNDERLINE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )


def _apply_legacy_pipeline(backend: Tokenizer) -> Tokenizer:
    """Sets the legacy normalizer and decoder on `backend` (in place) and removes its pre-tokenizer; returns it."""
    backend.normalizer = _legacy_normalizer()
    backend.pre_tokenizer = None
    backend.decoder = _legacy_decoder()
    return backend


def _bpe_merges(pieces: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """
    BPE merge rules equivalent to sentencepiece's BPE encoding of a vocabulary of `pieces` with `scores`.

    Sentencepiece merges the adjacent pair whose concatenation is the best-scoring piece; here every split of a piece
    into two pieces becomes a merge rule, ranked by the score of the merged piece (ties: vocabulary order).
    """
    index = {piece: i for i, piece in enumerate(pieces)}
    merges = []
    for i in sorted(range(len(pieces)), key=lambda i: (-scores[i], i)):
        piece = pieces[i]
        merges.extend(
            (piece[:cut], piece[cut:]) for cut in range(1, len(piece)) if piece[:cut] in index and piece[cut:] in index
        )
    return merges


def _add_tokens_in_order(backend: Tokenizer, tokens: list[str]) -> None:
    """Adds `tokens` to `backend` one by one as special, non-normalized tokens (new ids follow the list order)."""
    for token in tokens:
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])


def _wrap_backend(
    backend: Tokenizer,
    *,
    unk_token: str | None,
    bos_token: str | None,
    eos_token: str | None,
    model_max_length: int | None,
    padding_side: str = "left",
    add_bos_token: bool = True,
    add_eos_token: bool = False,
) -> TokenizersBackend:
    """A transformers tokenizer around `backend` (which holds the DreamLLM tokens), `[PAD]` padding, tokens named.

    Batches pad on the left, as generation needs; training collators pad on their own.
    """
    return TokenizersBackend(
        tokenizer_object=backend,
        unk_token=unk_token,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=PAD_TOKEN,
        extra_special_tokens=dict(DREAMLLM_SPECIAL_TOKENS),
        add_bos_token=add_bos_token,
        add_eos_token=add_eos_token,
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )


def _read_json(path: Path) -> dict:
    """The JSON object in `path`; a ValueError naming the file if it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid JSON file: {error}") from error


def _read_sentencepiece_model(path: Path) -> sentencepiece_model_pb2.ModelProto:
    """
    The sentencepiece model in `path`, checked to be a Llama-style model whose legacy encoding this module reproduces:
    BPE with byte fallback, identity normalization, dummy prefix on, extra whitespace kept.
    """
    if not path.is_file():
        raise FileNotFoundError(f"No sentencepiece model at {path} (the original checkpoint's tokenizer.model).")
    try:
        serialized = SentencePieceProcessor(model_file=str(path)).serialized_model_proto()
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{path} is not a valid sentencepiece model: {error}") from error
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != spec.BPE or not spec.byte_fallback:
        raise ValueError(f"{path} is not a byte-fallback BPE sentencepiece model (a Llama tokenizer).")
    if normalizer.name != "identity" or not normalizer.add_dummy_prefix or normalizer.remove_extra_whitespaces:
        raise ValueError(
            f"{path} normalizes text ({normalizer.name!r}, add_dummy_prefix={normalizer.add_dummy_prefix}, "
            f"remove_extra_whitespaces={normalizer.remove_extra_whitespaces}); only Llama's identity normalization "
            "with a dummy prefix is supported."
        )
    return proto


def _sentencepiece_backend(proto: sentencepiece_model_pb2.ModelProto) -> Tokenizer:
    """The byte-fallback BPE `tokenizers.Tokenizer` of a sentencepiece BPE model, with the legacy pipeline."""
    pieces = [piece.piece for piece in proto.pieces]
    normal = [piece for piece in proto.pieces if piece.type == _NORMAL_PIECE]
    merges = _bpe_merges([piece.piece for piece in normal], [piece.score for piece in normal])
    model = BPE(
        vocab={piece: i for i, piece in enumerate(pieces)},
        merges=merges,
        unk_token=pieces[proto.trainer_spec.unk_id],
        fuse_unk=True,
        byte_fallback=True,
    )
    return _apply_legacy_pipeline(Tokenizer(model))


def _token_content(value: str | dict) -> str:
    """The token string of a tokenizer-config entry, which is either the string or an AddedToken-like dict."""
    return value["content"] if isinstance(value, dict) else value


def _read_added_token_ids(original_dir: Path, config: dict) -> dict[str, int]:
    """
    Token -> id of the checkpoint's added tokens, from `tokenizer_config.json` (`added_tokens_decoder`) and/or
    `added_tokens.json`; a ValueError if the two files disagree.
    """
    ids = {_token_content(value): int(token_id) for token_id, value in config.get("added_tokens_decoder", {}).items()}
    added_tokens_file = original_dir / "added_tokens.json"
    if added_tokens_file.is_file():
        for token, token_id in _read_json(added_tokens_file).items():
            if ids.setdefault(token, token_id) != token_id:
                raise ValueError(
                    f"{added_tokens_file} gives {token!r} the id {token_id}, but tokenizer_config.json gives it "
                    f"{ids[token]}."
                )
    missing = [token for token in DREAMLLM_ADDED_TOKENS if token not in ids]
    if missing:
        raise ValueError(
            f"The checkpoint in {original_dir} does not define the DreamLLM special tokens {missing} "
            "(looked in tokenizer_config.json `added_tokens_decoder` and added_tokens.json)."
        )
    return ids


def _add_tokens_at_ids(backend: Tokenizer, token_ids: dict[str, int], source: Path) -> None:
    """
    Registers `token_ids` as special tokens of `backend` with exactly these ids: an id inside the base vocabulary
    must name the same piece there, and the ids beyond it must continue the vocabulary without gaps.
    """
    base_size = backend.get_vocab_size(with_added_tokens=False)
    for token, token_id in token_ids.items():
        if token_id < base_size and backend.id_to_token(token_id) != token:
            raise ValueError(f"{source}: {token!r} has id {token_id}, which is {backend.id_to_token(token_id)!r}.")
    added = sorted((token_id, token) for token, token_id in token_ids.items() if token_id >= base_size)
    if [token_id for token_id, _ in added] != list(range(base_size, base_size + len(added))):
        raise ValueError(f"{source}: the added token ids {added} do not continue the vocabulary of {base_size}.")
    _add_tokens_in_order(backend, sorted(token_ids, key=token_ids.get))


def convert_original_tokenizer(original_dir: str | os.PathLike) -> TokenizersBackend:
    """
    Builds the transformers 5 tokenizer of an original DreamLLM checkpoint (slow `LlamaTokenizer` files:
    `tokenizer.model`, `tokenizer_config.json`, optionally `added_tokens.json`) that gives the ids it was trained on.

    The added tokens keep the checkpoint's ids; BOS/EOS addition, `model_max_length` and the padding side come from
    `tokenizer_config.json` (defaults: BOS yes, EOS no, right padding). The result saves as a standard
    `tokenizer.json` that `AutoTokenizer.from_pretrained` loads back with the same behaviour.

    Raises:
        FileNotFoundError: `tokenizer.model` or `tokenizer_config.json` is missing.
        ValueError: a file is corrupt, a DreamLLM special token is missing, the ids are inconsistent, or the
            checkpoint asks for non-legacy tokenization.
    """
    original_dir = Path(original_dir)
    config_file = original_dir / "tokenizer_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"No tokenizer_config.json in {original_dir}.")
    config = _read_json(config_file)
    if config.get("legacy") is False:  # absent or null meant legacy=True in transformers 4.35
        raise ValueError(f"{config_file} sets legacy={config['legacy']!r}; DreamLLM checkpoints use legacy=True.")
    proto = _read_sentencepiece_model(original_dir / "tokenizer.model")
    named = {
        key: _token_content(config.get(key, default))
        for key, default in (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>"))
    }
    pieces = [piece.piece for piece in proto.pieces]
    token_ids = {token: pieces.index(token) for token in named.values() if token in pieces}
    token_ids.update(_read_added_token_ids(original_dir, config))
    missing = [token for token in named.values() if token not in token_ids]
    if missing:
        raise ValueError(f"The special tokens {missing} named in {config_file} are not in the vocabulary.")
    backend = _sentencepiece_backend(proto)
    _add_tokens_at_ids(backend, token_ids, original_dir)
    return _wrap_backend(
        backend,
        **named,
        model_max_length=config.get("model_max_length"),
        padding_side="left",
        add_bos_token=config.get("add_bos_token", True),
        add_eos_token=config.get("add_eos_token", False),
    )


def add_dreamllm_special_tokens(tokenizer: TokenizersBackend) -> TokenizersBackend:
    """
    A DreamLLM tokenizer made from a plain Llama/Vicuna tokenizer (sentencepiece-style BPE, as transformers 5 loads
    it), for building a new DreamLLM.

    Adds the eight DreamLLM tokens that are absent (new ids in `DREAMLLM_ADDED_TOKENS` order), makes `[PAD]` the pad
    token, names the DreamLLM tokens, adds BOS and no EOS, and switches to the legacy per-chunk tokenization of
    `convert_original_tokenizer`. `tokenizer` itself is left unchanged; its padding side and `model_max_length` are
    kept.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"Expected a tokenizers-backed (fast) Llama tokenizer, got {type(tokenizer).__name__}.")
    description = json.loads(backend.to_str())
    pre_tokenizer = (description.get("pre_tokenizer") or {}).get("type")
    if description["model"]["type"] != "BPE" or pre_tokenizer not in (None, "Metaspace"):
        raise ValueError(
            f"Expected a sentencepiece-style Llama tokenizer (BPE model, Metaspace pre-tokenizer), got a "
            f"{description['model']['type']} model with pre-tokenizer {pre_tokenizer}."
        )
    backend = _apply_legacy_pipeline(Tokenizer.from_str(backend.to_str()))
    _add_tokens_in_order(backend, [token for token in DREAMLLM_ADDED_TOKENS if backend.token_to_id(token) is None])
    return _wrap_backend(
        backend,
        unk_token=tokenizer.unk_token,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        model_max_length=tokenizer.model_max_length,
        padding_side="left",
    )


def _tiny_text_pieces(words: Sequence[str] = _TINY_WORDS) -> list[str]:
    """
    The mergeable pieces of the tiny tokenizer, best first: "▁", the printable ASCII characters, every prefix (of two
    characters or more) of "▁" + each of `words` (shortest first), and "▁▁".
    """
    prefixes = {SPIECE_UNDERLINE + word[:end] for word in words for end in range(1, len(word) + 1)}
    characters = [SPIECE_UNDERLINE, *(chr(code) for code in range(33, 127))]
    return characters + sorted(prefixes, key=lambda piece: (len(piece), piece)) + [SPIECE_UNDERLINE * 2]


def build_tiny_tokenizer(model_max_length: int = 2048, words: Sequence[str] = _TINY_WORDS) -> TokenizersBackend:
    """
    A tiny DreamLLM tokenizer built in memory (no files, no network, deterministic) for tests and toy models.

    Byte-fallback BPE whose vocabulary is `<unk>`, `<s>`, `</s>`, the 256 byte pieces and `_tiny_text_pieces(words)`
    (a few hundred pieces in all, each of `words` is one token, and any text encodes), then the eight DreamLLM tokens with ids in
    `RELEASED_ADDED_TOKEN_ORDER` (not list order, like the released checkpoints). Same legacy per-chunk tokenization,
    BOS added, no EOS, `[PAD]` padding on the right, named DreamLLM tokens. A model for it needs
    `vocab_size = len(tokenizer)`.
    """
    text_pieces = _tiny_text_pieces(words)
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), *text_pieces]
    model = BPE(
        vocab={piece: i for i, piece in enumerate(pieces)},
        merges=_bpe_merges(text_pieces, [-float(i) for i in range(len(text_pieces))]),
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = _apply_legacy_pipeline(Tokenizer(model))
    _add_tokens_in_order(backend, ["<unk>", "<s>", "</s>", *RELEASED_ADDED_TOKEN_ORDER])
    return _wrap_backend(
        backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=model_max_length
    )
