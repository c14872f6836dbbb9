import pytest

from imagereward.tokenizers import BertTokenizer
from helpers import BERT_VOCAB

# Ids produced by transformers.BertTokenizer("bert-base-uncased") + BLIP's [DEC]/[ENC],
# padding="max_length", truncation=True, max_length=35 (image-reward 1.5's call).
KNOWN = {
    "a painting of an ocean": [101, 1037, 4169, 1997, 2019, 4153, 102],
    "": [101, 102],
    "Un café à Zürich!": [101, 4895, 7668, 1037, 10204, 999, 102],
    "hello [DEC] world": [101, 7592, 30522, 2088, 102],
    "東京 tower": [101, 1879, 1755, 3578, 102],
}


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(str(BERT_VOCAB))


@pytest.mark.parametrize("text", list(KNOWN))
def test_known_ids(tokenizer, text):
    out = tokenizer([text])
    expected = KNOWN[text]
    assert out["input_ids"][0].tolist() == expected + [0] * (35 - len(expected))
    assert out["attention_mask"][0].tolist() == [1] * len(expected) + [0] * (35 - len(expected))


def test_truncation_keeps_cls_and_sep(tokenizer):
    ids = tokenizer([" ".join(["word"] * 40)])["input_ids"][0].tolist()
    assert ids == [101] + [2773] * 33 + [102]


def test_special_ids(tokenizer):
    assert (tokenizer.dec_token_id, tokenizer.enc_token_id) == (30522, 30523)


def test_batch_shapes(tokenizer):
    out = tokenizer(["a", "b c", ""])
    assert out["input_ids"].shape == (3, 35) and out["input_ids"].dtype.is_floating_point is False


def test_vocab_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEREWARD_BERT_VOCAB", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BertTokenizer()


def test_not_a_vocabulary(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="not a BERT vocabulary"):
        BertTokenizer(str(path))
