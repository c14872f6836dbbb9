"""Text tokenizers: BERT WordPiece (ImageReward, BLIP) and OpenAI CLIP BPE."""

from .bert import BertTokenizer, resolve_bert_vocab

__all__ = ["BertTokenizer", "resolve_bert_vocab"]
