"""Prompt formats shared by the world's training data and the evaluation tasks, and the world's VQA protocol.

The Japanese math prompt is the official MGSM-ja one; the chat format is Mistral's `[INST]` with the
Japanese system message of the official EvoVLM-JP evaluation, without its `<<SYS>>` wrapper (the world's
VLMs were trained on this format; `evollm.protocols.ja_vqa.OFFICIAL` asks with the wrapper).
"""

from evollm.protocols.ja_vqa import SYSTEM as SYSTEM_JA, VqaProtocol
from evollm.protocols.mgsm_ja import PROMPT_EN as ALPACA_EN, PROMPT_JA as ALPACA_JA

SYSTEM_EN = "You are a helpful assistant. Answer the question about the given image."
#: Mistral chat turn; `{image}` is "<image>\n" for VLM prompts and "" for text-only turns
CHAT = "[INST] {system}\n{image}{question} [/INST]"
IMAGE_TOKEN = "<image>"
#: the end of an answer inside a multi-turn document (the tokenizer's end-of-sequence token, as in Mistral's
#: format), so that a model read on such documents still stops after each answer
TURN_END = "</s>"


def alpaca_ja(question: str) -> str:
    return ALPACA_JA.format(question=question)


def alpaca_en(question: str) -> str:
    return ALPACA_EN.format(question=question)


def chat(question: str, system: str = SYSTEM_JA, image: bool = False) -> str:
    return CHAT.format(system=system, image=IMAGE_TOKEN + "\n" if image else "", question=question)


#: the world's VQA protocol: its own prompt, greedy decoding, short answers, float32; official scoring
WORLD_VQA = VqaProtocol("world", lambda q: chat(q, SYSTEM_JA, image=True),
                        generation={"num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 64},
                        dtype="float32", batch_size=16)


def _world_data(*parts):
    from evollm.checkout import checkout_file
    return lambda: str(checkout_file("assets", "data", *parts, what="the miniature world's data"))


#: `evovlm bench` tasks on the world's copies of the benchmarks: (source, split, protocol)
BENCH_VQA = (_world_data("ja-vg-vqa-500", "test.parquet"), "test", "world")
BENCH_CULTURE = (_world_data("ja-vlm-bench-in-the-wild", "test.parquet"), "test", "world")
