"""tokenizer_dir: pretrained-style dirs load without transformers, exactly as AutoTokenizer loads them.

The dirs are built offline the way real checkpoints are: tokenizers trained on real text (the sample
corpus plus the Chinese fixture), saved through transformers' own classes (BertTokenizerFast,
RobertaTokenizer, XLMRobertaTokenizer and AlbertTokenizer converting a sentencepiece model).
"""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AlbertTokenizer,
    AutoTokenizer,
    BertTokenizer,
    RobertaTokenizer,
    TokenizersBackend,
    XLMRobertaTokenizer,
)
from transformers.models.auto.tokenization_auto import (
    MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
    TOKENIZER_MAPPING_NAMES,
    tokenizer_class_from_name,
)

from data_pipeline.tokenizer.hf_dir import CLASS_RECIPES, MODEL_TYPE_CLASSES, load_without_transformers
from data_pipeline.tokenizer.load import SpecialIds, load_tokenizer
from tests.helpers.paths import ZH_FIXTURE

ZH_TEXT = ZH_FIXTURE.read_text(encoding="utf-8")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
RECIPE_CLASSES = {
    "generic": TokenizersBackend,
    "bert": BertTokenizer,
    "bert-v4-config": BertTokenizer,
    "roberta": RobertaTokenizer,
    "roberta-special-map": RobertaTokenizer,
    "xlm-roberta": XLMRobertaTokenizer,
    "albert": AlbertTokenizer,
}
# Text the comparison runs on: real English and Chinese prose, plus the cases where the classes differ
# (accents, case, fullwidth forms, quotes ALBERT rewrites, literal special-token strings).
EDGE_TEXTS = [
    "Héllo Wörld: CAFÉ, naïve Ærøskøbing, ÉCOLE façade, Straße.",
    "See zyxwvut, the documentation, <extra> and <legacy> here, or x [MASK] y and x <mask> y.",
    "中文[MASK]测试。手册页的章节 [CLS] and <mask> and </s> <s> [SEP]",
    "x [MASK] y",
    "The Quick  brown\tfox\n\njumps over ``quoted'' text — dash… end",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ｶﾀｶﾅ and 日本語のテキスト、ひらがな。",
]


@pytest.fixture(scope="module")
def training_lines(sample_documents):
    return [line for doc in sample_documents[:30] for line in doc.split("\n") if line.strip()] + [
        line for line in ZH_TEXT.split("\n") if line
    ]


@pytest.fixture(scope="module")
def compare_texts(sample_documents):
    return EDGE_TEXTS + sample_documents[30:50] + ZH_TEXT.split("\n\n")[:4]


def _wordpiece(lines, lowercase):
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        lines, trainers.WordPieceTrainer(vocab_size=1500, special_tokens=BERT_SPECIALS)
    )
    return backend


def _sentencepiece_model(lines, **options) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=1500, minloglevel=2, **options
    )
    return model.getvalue()


def _edit_config(path, drop=(), **set_keys):
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    for key in drop:
        config.pop(key)
    config.update(set_keys)
    with open(config_path, "w", encoding="utf-8") as fh:
        json.dump(config, fh)


@pytest.fixture(scope="module")
def pretrained_dirs(training_lines, tmp_path_factory):
    """name -> directory, each in a layout real checkpoints use."""
    root = tmp_path_factory.mktemp("pretrained")
    dirs = {}
    for name, lowercase in (("bert-uncased", True), ("bert-cased", False)):
        dirs[name] = str(root / name)
        vocab = _wordpiece(training_lines, lowercase).get_vocab()
        BertTokenizer(vocab=vocab, do_lower_case=lowercase).save_pretrained(dirs[name])
    # The trap: a cased tokenizer.json whose config does not say do_lower_case (BertTokenizer lowercases).
    dirs["bert-cased-config-silent"] = str(root / "bert-cased-config-silent")
    shutil.copytree(dirs["bert-cased"], dirs["bert-cased-config-silent"])
    _edit_config(dirs["bert-cased-config-silent"], drop=["do_lower_case"])
    # An old checkpoint: no tokenizer_class, the class comes from config.json's model_type.
    dirs["bert-model-type"] = str(root / "bert-model-type")
    shutil.copytree(dirs["bert-cased"], dirs["bert-model-type"])
    _edit_config(dirs["bert-model-type"], drop=["tokenizer_class", "do_lower_case"])
    (root / "bert-model-type" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    # Byte-level BPE (RoBERTa).
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(training_lines, trainer)
    model = json.loads(backend.to_str())["model"]
    dirs["roberta"] = str(root / "roberta")
    RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]]).save_pretrained(
        dirs["roberta"]
    )
    # Configs as transformers 4 wrote them: added_tokens_decoder in tokenizer_config.json (a [MASK] that
    # strips the space before it, an added word outside the vocabulary); a special_tokens_map.json with
    # AddedToken dicts and additional tokens, and a legacy added_tokens.json.
    dirs["bert-v4-config"] = str(root / "bert-v4-config")
    shutil.copytree(dirs["bert-uncased"], dirs["bert-v4-config"])
    size = Tokenizer.from_file(os.path.join(dirs["bert-uncased"], "tokenizer.json")).get_vocab_size()
    flags = {
        "__type": "AddedToken",
        "single_word": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    decoder = {str(i): {**flags, "content": t, "lstrip": t == "[MASK]"} for i, t in enumerate(BERT_SPECIALS)}
    decoder[str(size)] = {
        **flags,
        "content": "zyxwvut",
        "lstrip": False,
        "normalized": True,
        "special": False,
    }
    _edit_config(
        dirs["bert-v4-config"],
        added_tokens_decoder=decoder,
        mask_token={**flags, "content": "[MASK]", "lstrip": True},
    )
    dirs["roberta-special-map"] = str(root / "roberta-special-map")
    shutil.copytree(dirs["roberta"], dirs["roberta-special-map"])
    special_map = {
        "mask_token": {
            "content": "<mask>",
            "lstrip": True,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        },
        "additional_special_tokens": ["<extra>"],
    }
    (root / "roberta-special-map" / "special_tokens_map.json").write_text(json.dumps(special_map))
    size = Tokenizer.from_file(os.path.join(dirs["roberta"], "tokenizer.json")).get_vocab_size()
    (root / "roberta-special-map" / "added_tokens.json").write_text(json.dumps({"<legacy>": size}))
    # SentencePiece models converted by transformers (precompiled NFKC charsmap in the normaliser).
    for name, cls, file, options in (
        ("xlm-roberta", XLMRobertaTokenizer, "sentencepiece.bpe.model", {}),
        (
            "albert",
            AlbertTokenizer,
            "spiece.model",
            dict(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
        ),
    ):
        source = root / f"{name}-spm"
        source.mkdir()
        (source / file).write_bytes(_sentencepiece_model(training_lines, **options))
        dirs[name] = str(root / name)
        cls.from_pretrained(str(source)).save_pretrained(dirs[name])
    return dirs


def test_claimed_classes_are_the_ones_transformers_picks():
    """The fast path claims a class name only if transformers maps it to the class the recipe copies."""
    for name, recipe in CLASS_RECIPES.items():
        for spelling in (name, name + "Fast"):
            cls = tokenizer_class_from_name(spelling.removesuffix("Fast"))
            if cls is not None and cls.__name__ == "PythonBackend":  # AutoTokenizer's own substitution
                cls = TokenizersBackend
            assert cls is RECIPE_CLASSES[recipe], spelling
    for model_type, name in MODEL_TYPE_CLASSES.items():
        assert TOKENIZER_MAPPING_NAMES[model_type].removesuffix("Fast") == name
        assert model_type not in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS


def _backend_spec(backend: Tokenizer) -> dict:
    spec = json.loads(backend.to_str())
    spec.pop("truncation")  # both switched off by the pipeline
    spec.pop("padding")
    return spec


PRETRAINED_CLASSES = {
    "bert-uncased": BertTokenizer,
    "bert-cased": BertTokenizer,
    "bert-cased-config-silent": BertTokenizer,
    "bert-model-type": BertTokenizer,
    "bert-v4-config": BertTokenizer,
    "roberta": RobertaTokenizer,
    "roberta-special-map": RobertaTokenizer,
    "xlm-roberta": XLMRobertaTokenizer,
    "albert": AlbertTokenizer,
}


@pytest.mark.parametrize("name", list(PRETRAINED_CLASSES))
def test_pretrained_dir_loads_without_transformers_as_autotokenizer_does(
    name, pretrained_dirs, compare_texts
):
    path = pretrained_dirs[name]
    assert load_without_transformers(path) is not None  # the fast path claims it
    ours = load_tokenizer(path)
    auto = AutoTokenizer.from_pretrained(path)
    assert type(auto) is PRETRAINED_CLASSES[name]  # the dir really exercises that class
    # The whole pipeline (model, normaliser, pre-tokenizer, decoder, post-processor, added tokens) is
    # the one transformers built, and so are the special tokens and the vocabulary size.
    assert _backend_spec(ours.backend) == _backend_spec(auto.backend_tokenizer)
    assert ours.special_ids == SpecialIds(
        pad=auto.pad_token_id,
        unk=auto.unk_token_id,
        cls=auto.cls_token_id,
        sep=auto.sep_token_id,
        mask=auto.mask_token_id,
    )
    assert ours.vocab_size == len(auto)
    # The pipeline's ids: literal special-token strings are text (split_special_tokens).
    expected = auto(compare_texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [ids.tolist() for ids, _ in ours.encode_batch(compare_texts)] == expected
    with_specials = [e.ids for e in ours.backend.encode_batch(compare_texts)]
    assert with_specials == auto(compare_texts, split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe", "bpe"])
def test_our_dirs_load_as_autotokenizer_does(
    kind, wordpiece_tokenizer_dir, unigram_tokenizer_dir, bpe_tokenizer_dir, byte_level_bpe_dir, compare_texts
):
    path = {
        "wordpiece": wordpiece_tokenizer_dir,
        "sentencepiece-unigram": unigram_tokenizer_dir,
        "sentencepiece-bpe": bpe_tokenizer_dir,
        "bpe": byte_level_bpe_dir,
    }[kind]
    ours, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert _backend_spec(ours.backend) == _backend_spec(auto.backend_tokenizer)
    expected = auto(compare_texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [ids.tolist() for ids, _ in ours.encode_batch(compare_texts)] == expected


def test_older_config_files_are_honoured(pretrained_dirs):
    """What the comparison above covers for the v4-style dirs really is in them."""
    bert = load_tokenizer(pretrained_dirs["bert-v4-config"])
    added = {str(t): t for t in bert.backend.get_added_tokens_decoder().values()}
    assert added["[MASK]"].lstrip and not added["zyxwvut"].special
    assert bert.backend.token_to_id("zyxwvut") == bert.vocab_size - 1  # a new id after the vocabulary
    roberta = load_tokenizer(pretrained_dirs["roberta-special-map"])
    added = {str(t): t for t in roberta.backend.get_added_tokens_decoder().values()}
    assert added["<extra>"].special and "<legacy>" in added
    assert not added["<mask>"].lstrip  # tokenizer.json's own flags win over special_tokens_map.json's


def test_silent_bert_config_lowercases_unlike_its_tokenizer_json(pretrained_dirs):
    """What the test above guards: through transformers this dir lowercases, its tokenizer.json does not."""
    path = pretrained_dirs["bert-cased-config-silent"]
    as_saved = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ours = load_tokenizer(path)
    text = EDGE_TEXTS[0]
    ((ids, _),) = ours.encode_batch([text])
    assert ids.tolist() != as_saved.encode(text, add_special_tokens=False).ids
    assert ids.tolist() == ours.encode_batch([text.lower()])[0][0].tolist()


def test_tokenizer_json_only_dir_gets_conventional_specials(training_lines, tmp_path):
    _wordpiece(training_lines, lowercase=False).save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(str(tmp_path))
    assert ours.special_ids == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.mask_token is None  # transformers knows no roles here; the ids are still its ids
    expected = auto(EDGE_TEXTS, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    encoded = ours.encode_batch(EDGE_TEXTS)
    assert [ids.tolist() for ids, _ in encoded] == expected
    assert 4 not in encoded[2][0].tolist()  # "x [MASK] y": the literal string is not the mask token


def test_unclaimed_class_goes_through_transformers(pretrained_dirs, tmp_path, compare_texts):
    path = str(tmp_path / "distilbert")
    shutil.copytree(pretrained_dirs["bert-cased"], path)
    _edit_config(path, tokenizer_class="DistilBertTokenizer")
    assert load_without_transformers(path) is None
    ours = load_tokenizer(path)
    auto = AutoTokenizer.from_pretrained(path)
    expected = auto(compare_texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [ids.tolist() for ids, _ in ours.encode_batch(compare_texts)] == expected


def test_model_type_dir_copy_keeps_config_json(pretrained_dirs, tmp_path):
    """Its class comes from config.json: a copy without it would load as another tokenizer."""
    ours = load_tokenizer(pretrained_dirs["bert-model-type"])
    assert "config.json" in ours.files
    ours.save_copy(str(tmp_path / "copy"))
    copy = load_tokenizer(str(tmp_path / "copy"))
    assert copy.fingerprint == ours.fingerprint
    assert _backend_spec(copy.backend) == _backend_spec(ours.backend)


def test_pretrained_dirs_load_without_importing_transformers(pretrained_dirs):
    code = (
        "import sys; from data_pipeline.tokenizer.load import load_tokenizer; "
        "[load_tokenizer(d) for d in sys.argv[1:]]; print('transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *pretrained_dirs.values()], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
