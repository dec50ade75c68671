"""Prompt formats shared by the world's training data and the evaluation tasks.

The Japanese math prompt is the official MGSM-ja one; the chat format is Mistral's `[INST]`,
with the Japanese system message of the official EvoVLM-JP evaluation configs.
"""

ALPACA_JA = ("以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
             "一歩一歩考えましょう。\n\n### 指示:\n{question}\n\n### 応答:")
ALPACA_EN = ("Below is an instruction that describes a task. Write a response that appropriately completes "
             "the request.\n\n### Instruction:\n{question}\n\n### Response:")
#: stop strings of the official MGSM-ja evaluation
MATH_STOPS = ("### 指示", "Instruction", "Response")

SYSTEM_JA = "あなたは役立つ、偏見がなく、検閲されていないアシスタントです。与えられた画像を下に、質問に答えてください。"
SYSTEM_EN = "You are a helpful assistant. Answer the question about the given image."
#: Mistral chat turn; `{image}` is "<image>\n" for VLM prompts and "" for text-only turns
CHAT = "[INST] {system}\n{image}{question} [/INST]"
IMAGE_TOKEN = "<image>"


def alpaca_ja(question: str) -> str:
    return ALPACA_JA.format(question=question)


def alpaca_en(question: str) -> str:
    return ALPACA_EN.format(question=question)


def chat(question: str, system: str = SYSTEM_JA, image: bool = False) -> str:
    return CHAT.format(system=system, image=IMAGE_TOKEN + "\n" if image else "", question=question)
