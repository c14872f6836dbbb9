"""HPSv3's prompt on Qwen2-VL's tokenizer: the chat turn it scores, around the image.

HPSv3 asks Qwen2-VL-7B-Instruct, in one user turn of its chat template (the default
system turn first), to rate the image for the prompt, and reads its reward head at an
added special token, ``<|Reward|>``. Special tokens split the text before BPE, so the
turn is tokenised in three parts that join exactly: the constant :attr:`prefix` up to
``<|vision_start|>``, the image's placeholder tokens (as many as the image has merged
patches, added by the network), and each prompt's own part from ``<|vision_end|>`` on.
The vocabulary is Qwen2-VL's ``tokenizer.json`` (a file the scorer downloads).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch

from ..errors import PromptError, TokenizerFileError

REWARD_TOKEN = "<|Reward|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"

# Qwen2-VL-Instruct's chat template for one user turn of an image and a text, with the
# generation prompt: everything before the image, and the text's turn after it.
CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
CHAT_SUFFIX = "<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"

# HPSv3's instruction (the text its reward model was trained with), then its request for
# the rating at the reward token.
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""
RATING_REQUEST = """
Please provide the overall ratings of this image: <|Reward|>

END
"""


class HPSv3Tokenizer:
    """Callable: prompts -> ``{"input_ids": [N, L], "lengths": [N]}``, each row the ids of
    the prompt's turn after the image (right-padded with 0); :attr:`prefix` holds the ids
    before the image, :attr:`image_token_id` and :attr:`reward_token_id` the two tokens
    the network needs."""

    def __init__(self, tokenizer_file: str) -> None:
        from tokenizers import AddedToken, Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(tokenizer_file)
        except Exception as error:  # tokenizers raises its own Exception type
            raise TokenizerFileError(f"cannot read Qwen2-VL tokenizer file {tokenizer_file}: {error}") from None
        self.tokenizer.add_special_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)])
        self.image_token_id = self._token_id(IMAGE_PAD_TOKEN, tokenizer_file)
        self.reward_token_id = self._token_id(REWARD_TOKEN, tokenizer_file)
        self.prefix = torch.tensor(self._encode(CHAT_PREFIX), dtype=torch.long)
        self.tokenizer_file = tokenizer_file

    @property
    def saved_files(self) -> Dict[str, str]:
        """Files a saved model folder keeps beside its weights (the package does not ship this one)."""
        return {"tokenizer.json": self.tokenizer_file}

    def _token_id(self, token: str, source: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise TokenizerFileError(f"{source} has no {token} token: it is not Qwen2-VL's tokenizer")
        return int(found)

    def _encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def turn(self, prompt: str) -> str:
        """The text of the prompt's turn after the image."""
        return CHAT_SUFFIX.format(text=INSTRUCTION.format(text_prompt=prompt) + RATING_REQUEST)

    def __call__(self, prompts: Union[str, Sequence[str]]) -> Dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self._encode(self.turn(prompt)) for prompt in prompts]
        for index, row in enumerate(rows):
            if row.count(self.reward_token_id) != 1 or self.image_token_id in row:
                token = REWARD_TOKEN if row.count(self.reward_token_id) != 1 else IMAGE_PAD_TOKEN
                raise PromptError(f"prompts[{index}] contains {token}, a token HPSv3's chat turn reserves")
        width = max((len(row) for row in rows), default=0)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"input_ids": ids, "lengths": torch.tensor([len(row) for row in rows], dtype=torch.long)}


__all__ = ["HPSv3Tokenizer", "INSTRUCTION", "REWARD_TOKEN"]
