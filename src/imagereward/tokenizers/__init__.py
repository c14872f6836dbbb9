"""Text tokenizers: BERT WordPiece (ImageReward, BLIP) and OpenAI CLIP BPE."""

from .bert import BertTokenizer, resolve_bert_vocab
from .clip_bpe import CLIPTokenizer, resolve_clip_bpe

__all__ = ["BertTokenizer", "CLIPTokenizer", "resolve_bert_vocab", "resolve_clip_bpe"]
