"""OpenAI's CLIP files as test oracles, and a generator of hard prompts for tokenizers.

CI installs ``clip-anytorch`` without dependencies, so ``import clip`` fails
(it needs torchvision) but its ``simple_tokenizer.py`` and ``model.py`` only
need ftfy, regex, numpy and torch: they are loaded here by file path.
"""

from __future__ import annotations

import importlib.util
import os
import random
from types import ModuleType
from typing import List, Optional, Sequence

import torch


def load_openai_module(name: str) -> Optional[ModuleType]:
    """``clip/<name>.py`` of the installed OpenAI package, or None when it is absent."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], f"{name}.py")
    if not os.path.isfile(path):
        return None
    module_spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def oracle_tokenize(tokenizer, texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """``clip.tokenize(texts, truncate=True)`` on an OpenAI ``SimpleTokenizer``."""
    sot = tokenizer.encoder["<|startoftext|>"]
    eot = tokenizer.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [sot] + tokenizer.encode(text) + [eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = eot
        result[row, : len(ids)] = torch.tensor(ids)
    return result


FIXED_PROMPTS = [
    "",
    "   ",
    "a painting of an ocean with clouds and birds, day time, low depth field effect",
    "A CAT wearing a Hat!!!",
    "don't stop, it's what we're doing; you've I'm they'll he'd",
    "DON'T IT'S WE'RE",
    "salt &amp; pepper",
    "Tom &#39;s &lt;b&gt;bold&lt;/b&gt; &quot;quote&quot;",
    "double escaped &amp;amp; and &amp;lt;tag&amp;gt;",
    "&#x27;hex&#x27; &nbsp;space &copy; 2023 &eacute;t&eacute;",
    "tabs\tand\nnewlines\r\nand   runs    of     spaces",
    "ideographic\u3000space and\xa0nbsp and\u2028line sep and\x85next line",
    "file\x1cgroup\x1drecord\x1eunit\x1fseparators",
    "zero\u200bwidth\u200cjoiners\u200dhere\ufeffbom",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "cafe\u0301 combining accents e\u0300\u0301\u0302",
    "caf\u00c3\u00a9 mojibake \u00e2\u20ac\u2122 and \u00e2\u20ac\u0153quotes\u00e2\u20ac\u009d",
    "\u00c3\u00a0 la mode \u00c3\u00bc\u00c3\u00b6\u00c3\u00a4",
    "\u4e00\u53ea\u732b\u5728\u6708\u5149\u4e0b\u7761\u89c9",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5 \ud14c\uc2a4\ud2b8",
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442 \u041f\u0420\u0418\u0412\u0415\u0422",
    "\u03b5\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03a3\u039f\u03a6\u0399\u0391",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "emoji \U0001f431\U0001f436 \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44d\U0001f3fd \U0001f1ef\U0001f1f5",
    "\u2764\ufe0f\u2728\U0001f525\U0001f308 rainbow",
    "numbers 1234567890 and 3.14159 and 1,000,000 and \u0661\u0662\u0663 \u2167",
    "fullwidth \uff21\uff22\uff23\uff11\uff12\uff13\uff01",
    "ligatures \ufb01sh \ufb02ower",
    "\u0130stanbul STRASSE stra\u00dfe \u1e9e",
    "math \u2211 \u222b \u221e \u2264 \u2265 \u00b1 \u00d7 \u00f7 \u221a",
    "symbols @#$%^&*()_+-=[]{}|;:,.<>?/~`",
    "<|startoftext|> inside <|endoftext|> text",
    "<|ENDOFTEXT|> upper-case special",
    "control \x00 \x07 \x1b[31mred\x1b[0m",
    "soft\u00adhyphen and en\u2013dash and em\u2014dash \u2026",
    "curly \u2018single\u2019 \u201cdouble\u201d quotes",
    "trailing spaces    ",
    "    leading spaces",
]

_WORDS = (
    "a photo of the cat dog astronaut riding horse castle sunset mountains "
    "beautiful highly detailed digital painting trending on artstation 8k octane "
    "render unreal engine cinematic lighting portrait concept art sharp focus "
    "illustration by greg rutkowski alphonse mucha"
).split()

_PIECES = [
    "&amp;", "&#39;", "&lt;", "&gt;", "&quot;", "&amp;amp;", "&#x2764;", "&nbsp;",
    "\U0001f431", "\U0001f680", "\U0001f468\u200d\U0001f4bb", "\u2764\ufe0f",
    "\u732b", "\u65e5\u672c", "\ud55c", "\u00e9", "e\u0301", "\u00c3\u00a9", "\u00e2\u20ac\u2122",
    "\u00df", "\u0130", "\ufb01", "\uff21", "\u0661", "\u00bd", "\u2167",
    "  ", "\t", "\n", "\u3000", "\xa0", "\u2028", "\x1c", "\x85", "\u200b",
    "'s", "'LL", "!!", "...", "--", "(", ")", ",", "<|endoftext|>", "42", "1999",
]


def varied_prompts(count: int, seed: int = 0) -> List[str]:
    """The fixed hard cases, long prompts, then random mixes of words and odd pieces."""
    rng = random.Random(seed)
    prompts = list(FIXED_PROMPTS)
    for length in (60, 76, 77, 78, 120, 400):
        prompts.append(" ".join(rng.choice(_WORDS) for _ in range(length)))
    prompts.append("\U0001f431" * 100)
    prompts.append("\u732b" * 300)
    prompts.append("word, " * 90)
    while len(prompts) < count:
        parts = []
        size = rng.randint(60, 200) if rng.random() < 0.1 else rng.randint(1, 30)
        for _ in range(size):
            kind = rng.random()
            if kind < 0.55:
                word = rng.choice(_WORDS)
                parts.append(word.upper() if rng.random() < 0.1 else word)
            elif kind < 0.9:
                parts.append(rng.choice(_PIECES))
            else:
                parts.append(chr(rng.randint(0x20, 0x2FFF)))
            parts.append(rng.choice([" ", " ", " ", "", "  ", ", "]))
        prompts.append("".join(parts))
    return prompts[:count]
