"""Read a Hugging Face tokenizer directory as transformers 5's `AutoTokenizer` does, without importing it.

Importing transformers costs about 2 s per process (most of a small build's start-up). For the tokenizer
classes in `CLASS_RECIPES` this module builds the `tokenizers.Tokenizer` transformers would build: the same
model, normalizer, pre-tokenizer, decoder, post-processor and added tokens, and the same special tokens.
That is not always the tokenizer.json as saved: a class with its own constructor (`BertTokenizer`,
`RobertaTokenizer`, `XLMRobertaTokenizer`, `AlbertTokenizer`) keeps only the vocabulary (and merges) of
tokenizer.json and rebuilds the rest from tokenizer_config.json, with the constructor's defaults (for
BERT `do_lower_case=True`); the generic class (`PreTrainedTokenizerFast`, what `mlm-data tokenizer`
writes) uses tokenizer.json as it is. Any other directory (another class, remote code, a model type
transformers may remap) gives None, and the caller goes through transformers.
`tests/data_pipeline/tokenizer/test_hf_dir.py` checks each claim against `AutoTokenizer`.
"""

from __future__ import annotations

import base64
import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROLES = ("pad", "unk", "cls", "sep", "mask")
# PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order (the order missing specials are added in).
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# tokenizer_class (with "Fast" removed, as AutoTokenizer does) -> recipe. Every name resolves to the
# recipe's class in transformers 5 ("PreTrainedTokenizer" is what "PreTrainedTokenizerFast" becomes).
CLASS_RECIPES = {
    "TokenizersBackend": "generic",
    "PreTrainedTokenizer": "generic",
    "BertTokenizer": "bert",
    "ElectraTokenizer": "bert",
    "LayoutLMTokenizer": "bert",
    "MobileBertTokenizer": "bert",
    "SqueezeBertTokenizer": "bert",
    "RobertaTokenizer": "roberta",
    "BartTokenizer": "roberta",
    "LongformerTokenizer": "roberta",
    "XLMRobertaTokenizer": "xlm-roberta",
    "AlbertTokenizer": "albert",
}
# config.json model_type -> the tokenizer class AutoTokenizer picks for it when tokenizer_config.json names
# none. A dir with a config.json of any other model type goes through transformers (it remaps some).
MODEL_TYPE_CLASSES = {
    "bert": "BertTokenizer",
    "distilbert": "BertTokenizer",
    "electra": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "albert": "AlbertTokenizer",
}
# The model type in tokenizer.json each class's constructor expects, and the special tokens its
# signature defaults to (a role absent from the config gets the default).
_RECIPE_MODEL = {
    "generic": None,
    "bert": "WordPiece",
    "roberta": "BPE",
    "xlm-roberta": "Unigram",
    "albert": "Unigram",
}
_ROBERTA_DEFAULTS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_DEFAULT_SPECIALS = {
    "generic": {},
    "bert": {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
    "roberta": _ROBERTA_DEFAULTS,
    "xlm-roberta": _ROBERTA_DEFAULTS,
    "albert": {
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "unk_token": "<unk>",
        "sep_token": "[SEP]",
        "pad_token": "<pad>",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
}


class _Unsupported(Exception):
    """Something this module does not replicate: transformers must load the directory."""


def load_without_transformers(path: str) -> tuple[Tokenizer, dict[str, str]] | None:
    """(backend, special token by role) that `AutoTokenizer.from_pretrained(path)` would give, or None.

    Roles are 'pad' 'unk' 'cls' 'sep' 'mask'; a role the directory does not define is absent. None means
    the directory is not one this module replicates (or it is unreadable here): load it with transformers,
    which also reports what is wrong with it. Never raises for bad input.
    """
    try:
        tokenizer_json = _read_json(os.path.join(path, "tokenizer.json"))
        if tokenizer_json is None:
            return None
        tok_config = _read_json(os.path.join(path, "tokenizer_config.json"))
        model_config = _read_json(os.path.join(path, "config.json"))
        recipe = _recipe(tok_config, model_config)
        if recipe is None:
            return None
        kwargs, added = _init_kwargs(path, dict(tok_config or {}), tokenizer_json)
        named = _named_specials(kwargs, _DEFAULT_SPECIALS[recipe])
        backend = _build_backend(recipe, path, tokenizer_json, kwargs, named)
        _add_tokens(backend, added, named, _extra_specials(kwargs))
        _set_post_processor(recipe, backend, tokenizer_json, kwargs, named)
    except Exception:  # not refused here: transformers gets the final word (and names the problem)
        return None
    return backend, {role: str(named[f"{role}_token"]) for role in ROLES if named.get(f"{role}_token")}


def _read_json(file: str) -> dict | None:
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise _Unsupported(file)
    return data


def _recipe(tok_config: dict | None, model_config: dict | None) -> str | None:
    """The recipe of the class AutoTokenizer would pick (see models/auto/tokenization_auto.py), or None."""
    if tok_config is not None and "auto_map" in tok_config:
        return None  # remote code
    model_type = None
    if model_config is not None:
        model_type = model_config.get("model_type")
        if model_type not in MODEL_TYPE_CLASSES:
            return None
    name = (tok_config or {}).get("tokenizer_class") or (model_config or {}).get("tokenizer_class")
    if name is None:
        name = MODEL_TYPE_CLASSES[model_type] if model_type else "TokenizersBackend"
    if not isinstance(name, str):
        return None
    return CLASS_RECIPES.get(name.removesuffix("Fast"))


def _token(value: object) -> str | AddedToken:
    """A special token as transformers reads it from a config: a string or a serialized AddedToken."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        fields = {k: v for k, v in value.items() if k != "__type"}
        return AddedToken(**fields)
    raise _Unsupported(f"special token {value!r}")


def _is_token(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken")


def _init_kwargs(path: str, kwargs: dict, tokenizer_json: dict) -> tuple[dict, list[AddedToken]]:
    """The constructor kwargs and the added tokens to register, as PreTrainedTokenizerBase._from_pretrained
    assembles them from tokenizer_config.json, special_tokens_map.json, added_tokens.json, tokenizer.json."""
    kwargs.pop("tokenizer_class", None)
    if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    added: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in kwargs:
        decoder = kwargs.pop("added_tokens_decoder")
        if not isinstance(decoder, dict):
            raise _Unsupported("added_tokens_decoder")
        for index, token in decoder.items():
            token = _token(token)
            if not isinstance(token, AddedToken):
                raise _Unsupported("added_tokens_decoder entry")
            added[int(index)] = token
    else:
        special_map = _read_json(os.path.join(path, "special_tokens_map.json")) or {}
        for key, value in special_map.items():
            if isinstance(value, dict) and key != "extra_special_tokens":
                fields = {k: v for k, v in value.items() if k not in ("special", "__type")}
                value = AddedToken(**fields, special=True)
            elif key == "extra_special_tokens" and isinstance(value, list):
                existing = list(kwargs.get("extra_special_tokens") or [])
                for token in value:
                    token = _token(token) if isinstance(token, dict) else token
                    if token not in existing:
                        existing.append(token)
                value = existing
            kwargs[key] = value
        legacy_added = _read_json(os.path.join(path, "added_tokens.json"))
        if legacy_added is not None:
            specials = {str(kwargs[k]) for k in NAMED_SPECIALS if kwargs.get(k)}
            specials.update(str(t) for t in (kwargs.get("extra_special_tokens") or []))
            for content, index in legacy_added.items():
                special = content in specials
                added[int(index)] = AddedToken(
                    content, rstrip=False, lstrip=False, normalized=not special, special=special
                )
        for entry in tokenizer_json.get("added_tokens") or []:
            fields = {k: v for k, v in entry.items() if k != "id"}
            added[int(entry["id"])] = AddedToken(**fields)
    by_content = {str(token): token for token in added.values()}
    for key in list(kwargs):
        if key.endswith("_token") and _is_token(kwargs[key]):
            kwargs[key] = _token(kwargs[key])
            kwargs[key] = by_content.get(str(kwargs[key]), kwargs[key])
    return kwargs, [token for _, token in sorted(added.items())]


def _named_specials(kwargs: dict, defaults: dict) -> dict[str, str | AddedToken | None]:
    """Named special tokens in PreTrainedTokenizerBase's order: the standard seven (class defaults where
    the config names none), then model-specific ones (any other `*_token` key)."""
    named = {key: kwargs.get(key, defaults.get(key)) for key in NAMED_SPECIALS}
    for key, value in kwargs.items():
        if key.endswith("_token") and key not in named and isinstance(value, (str, AddedToken)):
            named[key] = value
    for key, value in named.items():
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise _Unsupported(key)
    return named


def _extra_specials(kwargs: dict) -> list[str | AddedToken]:
    extra = kwargs.get("extra_special_tokens") or kwargs.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        return []  # named model-specific tokens: _named_specials has them
    if not isinstance(extra, list):
        raise _Unsupported("extra_special_tokens")
    return [_token(token) for token in extra]


def _flag(kwargs: dict, key: str, default: bool | None) -> bool | None:
    value = kwargs.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise _Unsupported(key)
    return value


def _build_backend(recipe: str, path: str, tokenizer_json: dict, kwargs: dict, named: dict) -> Tokenizer:
    """The backend each class's constructor builds (transformers/models/*/tokenization_*.py)."""
    if recipe == "generic":
        return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    model = tokenizer_json.get("model") or {}
    if model.get("type") != _RECIPE_MODEL[recipe]:
        raise _Unsupported(f"{recipe} with a {model.get('type')} model")
    vocab = model["vocab"]
    if recipe == "bert":
        backend = Tokenizer(models.WordPiece(vocab, unk_token=str(named["unk_token"])))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=_flag(kwargs, "tokenize_chinese_chars", True),
            strip_accents=_flag(kwargs, "strip_accents", None),
            lowercase=_flag(kwargs, "do_lower_case", True),
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        return backend
    if recipe == "roberta":
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        backend = Tokenizer(
            models.BPE(
                vocab,
                merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=_flag(kwargs, "add_prefix_space", False)
        )
        backend.decoder = decoders.ByteLevel()
        return backend
    # SentencePiece-style classes: Unigram, WhitespaceSplit + Metaspace, the precompiled charsmap if any.
    pieces = [(piece, score) for piece, score in vocab]
    backend = Tokenizer(
        models.Unigram(pieces, unk_id=3 if recipe == "xlm-roberta" else 1, byte_fallback=False)
    )
    charsmap = _precompiled_charsmap(tokenizer_json)
    if recipe == "xlm-roberta":
        if charsmap is not None:
            backend.normalizer = normalizers.Precompiled(charsmap)
    else:
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if not _flag(kwargs, "keep_accents", False):
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if _flag(kwargs, "do_lower_case", True):
            steps.append(normalizers.Lowercase())
        if charsmap is not None:
            steps.append(normalizers.Precompiled(charsmap))
        backend.normalizer = normalizers.Sequence(steps)
    scheme = "always" if _flag(kwargs, "add_prefix_space", True) else "never"
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    return backend


def _precompiled_charsmap(tokenizer_json: dict) -> bytes | None:
    """The SentencePiece charsmap in tokenizer.json's normalizer (as convert_to_native_format finds it)."""
    spec = tokenizer_json.get("normalizer")
    if not spec:
        return None
    steps = spec["normalizers"] if spec.get("type") == "Sequence" else [spec]
    for step in steps:
        if step.get("type") == "Precompiled" and "precompiled_charsmap" in step:
            return base64.b64decode(step["precompiled_charsmap"])
    return None


def _add_tokens(backend: Tokenizer, added: list[AddedToken], named: dict, extra: list) -> None:
    """Register the added tokens and any special token not yet in the backend (TokenizersBackend.__init__:
    every saved added token is registered again, in id order, then the missing specials, as special)."""
    to_add = list(added)
    seen = {str(t) for t in backend.get_added_tokens_decoder().values()} | {str(t) for t in to_add}
    for token in [v for v in named.values() if v is not None] + extra:
        if str(token) not in seen:
            to_add.append(token)
            seen.add(str(token))
    named_contents = {str(v) for v in named.values() if v}
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in named_contents:
            token.special = True
        tokens.append(token)
    if tokens:
        backend.add_tokens(tokens)


def _set_post_processor(
    recipe: str, backend: Tokenizer, tokenizer_json: dict, kwargs: dict, named: dict
) -> None:
    """The template each class installs (the pipeline adds its own specials; this keeps decode/encode with
    specials equal to transformers' for users of the backend)."""
    if recipe == "generic":
        if backend.post_processor is None:  # TokenizersBackend.update_post_processor, no bos/eos added
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        return
    if recipe == "albert" and tokenizer_json.get("post_processor"):
        # ALBERT sets its template before TokenizersBackend.__init__, which replaces it by the saved one.
        saved = {**_EMPTY_TOKENIZER, "post_processor": tokenizer_json["post_processor"]}
        backend.post_processor = Tokenizer.from_str(json.dumps(saved)).post_processor
        return
    token_id = backend.token_to_id
    if recipe == "bert":
        cls, sep = str(named["cls_token"]), str(named["sep_token"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, _id_or(token_id(cls), 2)), (sep, _id_or(token_id(sep), 3))],
        )
    elif recipe == "roberta":
        cls, sep = str(named["cls_token"]), str(named["sep_token"])
        backend.post_processor = processors.RobertaProcessing(
            (sep, token_id(sep)),
            (cls, token_id(cls)),
            trim_offsets=_flag(kwargs, "trim_offsets", True),
            add_prefix_space=_flag(kwargs, "add_prefix_space", False),
        )
    elif recipe == "xlm-roberta":
        bos, eos = str(named["bos_token"]), str(named["eos_token"])
        backend.post_processor = processors.TemplateProcessing(
            single=[bos, "$A", eos],
            pair=[bos, "$A", eos, eos, "$B", eos],
            special_tokens=[(bos, token_id(bos)), (eos, token_id(eos))],
        )
    else:
        cls, sep = str(named["cls_token"]), str(named["sep_token"])
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", token_id(cls)), ("[SEP]", token_id(sep))],
        )


def _id_or(token_id: int | None, default: int) -> int:
    return default if token_id is None else token_id


_EMPTY_TOKENIZER = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [],
    "normalizer": None,
    "pre_tokenizer": None,
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"},
}
